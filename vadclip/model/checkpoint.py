"""Saving/loading vadclip checkpoints, and loading the official VadCLIP checkpoints
(state dicts with ``clipmodel.*`` keys, nwpu-zxr/VadCLIP) into this model."""
from __future__ import annotations

import io
from typing import Any, Dict, Optional, Union

import torch

from vadclip.io import storage
from vadclip.errors import InputError, one_line
from vadclip.clip.backbone import FrozenCLIP
from vadclip.model.config import VadConfig
from vadclip.model.network import VadCLIP

FORMAT = "vadclip/1"

_ADAPTER_PREFIXES = ("temporal.", "gc1.", "gc2.", "gc3.", "gc4.", "linear.", "frame_position_embeddings.")


class CheckpointError(InputError):
    pass


def checkpoint_dict(model: VadCLIP, **extra: Any) -> Dict[str, Any]:
    return {"format": FORMAT, "config": model.cfg.to_dict(), "embed_dim": model.embed_dim,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}


def weights_digest(model: VadCLIP) -> str:
    """``sha256:…`` of what a scoring model computes with: its configuration and the
    tensors of its state dict, the prompt's context tokens left out once the class text
    features they produce are frozen in it.  So one model gives one digest through any
    reference: its training checkpoint, or its registered version (an inference
    checkpoint holding the frozen text features instead of the prompt)."""
    import hashlib
    import json

    state = model.state_dict()
    frozen = bool(state.get("has_frozen_text", torch.tensor(False)))
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True, default=str).encode())
    for k, v in sorted(state.items()):
        if frozen and k.startswith("prompt."):
            continue
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def save_checkpoint(model: VadCLIP, path: str, **extra: Any) -> None:
    """Write a checkpoint (local or in object storage) whole or not at all."""
    buf = io.BytesIO()
    torch.save(checkpoint_dict(model, **extra), buf)
    storage.write_bytes(path, buf.getvalue())


def _torch_load(f, name: str) -> Dict[str, Any]:
    """``torch.load`` that never runs code: tensors and plain containers only."""
    import pickle

    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            glob = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), "")
            raise CheckpointError(f"{name}: refused: the checkpoint carries pickled Python objects, and loading "
                                  f"it could run code ({glob[:160]})") from None
        raise CheckpointError(f"{name}: not a readable torch checkpoint") from None
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"{name}: not a readable torch checkpoint ({one_line(e, 200)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    return obj


def _load_obj(src: Union[str, bytes, Dict[str, Any]]) -> Dict[str, Any]:
    if isinstance(src, dict):
        return src
    if isinstance(src, bytes):
        return _torch_load(io.BytesIO(src), "checkpoint")
    if not storage.isfile(src):
        raise CheckpointError(f"checkpoint not found: {src}")
    return _torch_load(io.BytesIO(storage.read_bytes(src)), src)


def load_checkpoint(src: Union[str, bytes, Dict[str, Any]], with_clip: bool = False,
                    clip: Optional[FrozenCLIP] = None, device: str = "cpu") -> VadCLIP:
    """Load a vadclip checkpoint.  ``with_clip`` rebuilds the frozen CLIP text encoder
    (needed to go on training the prompts); otherwise the model scores with the frozen
    text features stored in the checkpoint."""
    obj = _load_obj(src)
    name = src if isinstance(src, str) else "checkpoint"
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not a {FORMAT} checkpoint "
                              "(use load_official_checkpoint for the official VadCLIP weights)")
    if not isinstance(obj.get("state_dict"), dict) or not isinstance(obj.get("config"), dict):
        raise CheckpointError(f"{name}: malformed {FORMAT} checkpoint (needs 'config' and 'state_dict')")
    cfg = VadConfig.from_dict(obj["config"])
    state = obj["state_dict"]
    if with_clip or clip is not None:
        clip = clip or FrozenCLIP(cfg.clip, device=device)
        model = VadCLIP(cfg, clip)
        model.load_state_dict(state)
    else:
        if not bool(state.get("has_frozen_text", torch.tensor(False))):
            raise CheckpointError("checkpoint has no frozen text features; load it with with_clip=True")
        model = VadCLIP(cfg, embed_dim=obj["embed_dim"])
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("prompt.")})
    return model.to(device).eval()


def map_official_state_dict(state: Dict[str, torch.Tensor]):
    """Split an official state dict into (this model's state dict, CLIP state dict)."""
    mine, clip_sd = {}, {}
    for k, v in state.items():
        if k.startswith("clipmodel."):
            clip_sd[k[len("clipmodel."):]] = v
        elif k.startswith("disAdj."):
            continue  # unused parameter of the official DistanceAdj
        elif k.startswith(_ADAPTER_PREFIXES):
            mine["adapter." + k] = v
        elif k == "text_prompt_embeddings.weight":
            mine["prompt.text_prompt_embeddings.weight"] = v
        elif k.startswith(("mlp1.", "mlp2.", "classifier.")):
            mine[k] = v
        else:
            raise CheckpointError(f"unexpected key in official checkpoint: {k}")
    return mine, clip_sd


def official_state_dict(model: VadCLIP, clip_dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """This model as an official ``CLIPVAD`` state dict (the inverse of
    :func:`map_official_state_dict`): loadable by the official code, and by
    :func:`load_official_checkpoint`.  ``clip_dtype`` casts the CLIP weights (the
    released files hold fp16)."""
    if model.clip is None:
        raise CheckpointError("an official state dict needs the model's CLIP (load it with with_clip=True)")
    state: Dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if k.startswith("adapter."):
            state[k[len("adapter."):]] = v
        elif k.startswith("prompt."):
            state["text_prompt_embeddings.weight"] = v
        elif k not in ("frozen_text_features", "has_frozen_text"):
            state[k] = v
    state["disAdj.sigma"] = torch.tensor([0.1])   # unused parameter of the official DistanceAdj
    for k, v in model.clip.clip.state_dict().items():
        state["clipmodel." + k] = v.to(clip_dtype) if clip_dtype is not None and v.is_floating_point() else v
    return state


def load_official_checkpoint(src: Union[str, Dict[str, Any]], cfg: VadConfig,
                             clip: Optional[FrozenCLIP] = None, device: str = "cpu") -> VadCLIP:
    """Load an official VadCLIP ``.pth`` (``model_ucf.pth`` / ``model_xd.pth``, or a training
    checkpoint with ``model_state_dict``).  Its ``clipmodel.*`` weights are loaded into the
    frozen CLIP built from ``cfg`` (no download needed: the config's CLIP is built without
    pretrained weights when the checkpoint carries them)."""
    obj = _load_obj(src)
    state = obj.get("model_state_dict", obj)
    mine, clip_sd = map_official_state_dict(state)
    if clip is None:
        kwargs = dict(cfg.clip.kwargs)
        kwargs.setdefault("force_quick_gelu", True)  # the official weights are OpenAI's: QuickGELU
        spec = cfg.clip.__class__(cfg.clip.model, None if clip_sd else cfg.clip.pretrained, kwargs)
        clip = FrozenCLIP(spec, device=device)
    if clip_sd:
        missing, unexpected = clip.clip.load_state_dict(clip_sd, strict=False)
        missing = [k for k in missing if k != "attn_mask"]
        if missing:
            raise CheckpointError(f"official checkpoint lacks CLIP weights: {missing[:5]}...")
    if cfg.feature_provenance is None:   # official models were trained on the official release's features
        from vadclip._version import __version__
        from vadclip.io.provenance import official

        cfg = cfg.replace(feature_provenance=official(range(10), __version__))
    model = VadCLIP(cfg, clip)
    fpe = mine.get("adapter.frame_position_embeddings.weight")
    if fpe is not None and fpe.shape[0] != cfg.visual_length:
        raise CheckpointError(f"checkpoint visual_length {fpe.shape[0]} != config {cfg.visual_length}")
    result = model.load_state_dict(mine, strict=False)
    missing = [k for k in result.missing_keys if k not in ("frozen_text_features", "has_frozen_text")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"official checkpoint does not fit the config: missing {missing}, "
                              f"unexpected {result.unexpected_keys}")
    return model.to(device).eval()


def is_official_state(obj: Dict[str, Any]) -> bool:
    """An official VadCLIP checkpoint: a state dict (or ``model_state_dict``) whose keys
    are those of the official ``CLIPVAD`` module."""
    state = obj.get("model_state_dict", obj)
    return isinstance(state, dict) and any(str(k).startswith(("clipmodel.", "temporal.resblocks."))
                                           for k in state)


def official_preset(obj: Dict[str, Any]) -> str:
    """The official preset a checkpoint was trained with: UCF-Crime has two temporal
    layers, XD-Violence one."""
    state = obj.get("model_state_dict", obj)
    return "ucf" if any(str(k).startswith("temporal.resblocks.1.") for k in state) else "xd"


def load_model_file(src: Union[str, bytes, Dict[str, Any]]) -> VadCLIP:
    """A scoring model from any checkpoint file, read once and recognised by its
    contents: a vadclip inference checkpoint (frozen text features), a vadclip training
    checkpoint (text features computed once with its CLIP), or an official VadCLIP
    ``.pth`` (its preset recognised from the weights)."""
    obj = _load_obj(src)
    name = src if isinstance(src, str) else "checkpoint"
    if obj.get("format") == FORMAT:
        if bool((obj.get("state_dict") or {}).get("has_frozen_text", torch.tensor(False))):
            return load_checkpoint(obj)
        model = load_checkpoint(obj, with_clip=True)
    elif is_official_state(obj):
        model = load_official_checkpoint(obj, VadConfig.from_preset(official_preset(obj)))
    else:
        raise CheckpointError(f"{name}: neither a {FORMAT} checkpoint nor an official VadCLIP checkpoint")
    model.freeze_text()
    return model.eval()
