"""Which frozen CLIP: an open_clip model name, its weights and model kwargs — shared by
the model config and the extraction options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from vadclip.errors import InputError

TINY_CLIP = "vadclip-tiny"   # a tiny ViT registered with open_clip (vadclip/clip/configs/); tests, demo


@dataclass(frozen=True)
class ClipSpec:
    """Which frozen CLIP, shared by the model config and the extraction options: an
    open_clip model name, its weights (a pretrained tag such as ``openai``, a local
    weights file, or ``None`` for seeded random init) and ``kwargs`` passed on to
    ``open_clip.create_model`` (e.g. ``{"embed_dim": 512}`` or
    ``{"force_quick_gelu": True}`` for a local OpenAI weights file; a tag's own
    activation comes from open_clip's pretrained config)."""

    model: str = "ViT-B-16"
    pretrained: Optional[str] = "openai"
    kwargs: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def tiny(cls, embed_dim: int = 32) -> "ClipSpec":
        """The tiny random-init CLIP (no download; tests and the offline demo)."""
        return cls(TINY_CLIP, None, {} if embed_dim == 32 else {"embed_dim": int(embed_dim)})

    @classmethod
    def of(cls, value: Any) -> "ClipSpec":
        """A spec from a spec, a dict (``to_dict``), or None (the default)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"model", "pretrained", "kwargs"}
            if unknown:
                raise InputError(f"unknown CLIP settings {sorted(unknown)} (use model, pretrained, kwargs)")
            return cls(**{k: v for k, v in value.items() if not (k == "kwargs" and v is None)})
        raise InputError(f"CLIP settings must be a mapping of model/pretrained/kwargs, got {value!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "pretrained": self.pretrained, "kwargs": dict(self.kwargs)}

    def resolve(self):
        """At job start, on the driver: the model exists and its weights are had once
        (a :class:`vadclip.clip.weights.Weights` to hand to the workers; None for random init)."""
        from vadclip.clip.catalog import model_config
        from vadclip.clip.weights import activate, resolve_weights

        model_config(self.model)
        w = resolve_weights(self.model, self.pretrained)
        activate(w)     # what the driver itself builds uses the same file
        return w

    @property
    def embed_dim(self) -> int:
        from vadclip.clip.catalog import clip_embed_dim

        return clip_embed_dim(self.model, self.kwargs)

    @property
    def image_size(self) -> int:
        from vadclip.clip.catalog import model_config

        size = (self.kwargs.get("vision_cfg") or {}).get("image_size") or \
            model_config(self.model).get("vision_cfg", {}).get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def describe(self) -> str:
        return f"{self.model} ({'random init' if not self.pretrained else self.pretrained})"


