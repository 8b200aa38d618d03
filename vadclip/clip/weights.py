"""CLIP weights, resolved once per job on the driver and handed to the workers by Ray.

``resolve_weights(spec)`` runs on the driver before any worker starts: an open_clip
pretrained tag is downloaded once into the usual cache (a cached copy is used without
asking the hub), a storage URI (``s3://models/ViT-B-16.bin``) is copied once into a
node-local cache, a local file is taken as it is; then the file's SHA-256 is computed.
A machine that cannot reach the hub while nothing is cached gets one line naming the
tag and how to pass a file (:class:`WeightsUnavailable`, an input error: exit 2), in
seconds — before a single actor has started and retried.

``vadclip.jobs.cluster.share_weights`` puts the bytes in Ray's object store once; a worker calls
``activate(weights)`` and every CLIP it builds for that model and source
(:func:`vadclip.clip.backbone.build_open_clip`) then loads the file from its node: the
driver's own file on the driver's node, else a node-local copy named by the digest,
written once per node from the object store.  No worker contacts a model hub or the
weights' bucket.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from vadclip.io import storage
from vadclip.errors import EnvironmentProblem, InputError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
REACH_TIMEOUT_S = 5.0


class WeightsUnavailable(InputError):
    """The CLIP weights asked for cannot be had here (offline with nothing cached, an
    unknown tag, a missing file or object)."""


def weights_kind(pretrained: Optional[str]) -> str:
    """``none`` (random init), ``file`` (a path or storage URI, or a name ending in a
    weights suffix, e.g. ``weights.pt``) or ``tag`` (an open_clip pretrained tag)."""
    if not pretrained:
        return "none"
    p = str(pretrained)
    return "file" if storage.is_uri(p) or os.path.sep in p or p.endswith(WEIGHT_SUFFIXES) else "tag"


@dataclass(frozen=True)
class Weights:
    """One job's CLIP weights: where they came from, what they are, where they lie."""

    model: str                       # open_clip model name
    source: str                      # what the user gave: a tag, a local file or a storage URI
    digest: str                      # SHA-256 of the file's bytes
    size: int
    path: str                        # the file on the node that resolved it
    # a tag's settings from open_clip's pretrained config (QuickGELU, preprocessing)
    quick_gelu: bool = False
    preprocess: Dict[str, Any] = field(default_factory=dict)
    # how a process on another node gets the bytes: an object with ``here()`` (is this
    # process on the node whose disk holds ``path``?) and ``fetch()`` (the bytes); the
    # jobs hand the workers one backed by Ray's object store (vadclip.jobs.cluster.share_weights)
    carrier: Any = None

    def describe(self) -> str:
        return f"{self.model} {self.source} (sha256 {self.digest[:12]}, {self.size / 2**20:.1f} MiB)"

    def local_file(self) -> str:
        """The weights as a file on this node: the resolved file where it lies here,
        else a node-local copy named by the digest (written once from the object store)."""
        if (self.carrier is None or self.carrier.here()) and _size(self.path) == self.size:
            return self.path
        cached = os.path.join(storage.scratch_dir(), "clip-weights",
                              f"{self.digest}{os.path.splitext(self.path)[1]}")
        if _size(cached) == self.size:
            return cached
        if self.carrier is None:
            raise EnvironmentProblem(f"CLIP weights {self.describe()} are not on this node "
                                     f"({socket.gethostname()}) and were not shared with it")
        import numpy as np

        data = self.carrier.fetch()
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cached), suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.asarray(data, dtype=np.uint8).tofile(fh)
            os.replace(tmp, cached)   # whole or not at all; concurrent writers write the same bytes
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return cached

    def create_kwargs(self) -> Dict[str, Any]:
        """What ``open_clip.create_model`` needs beside the file to build what the source
        would have built (a tag's activation and preprocessing)."""
        out: Dict[str, Any] = {}
        if self.quick_gelu:
            out["force_quick_gelu"] = True
        if self.preprocess:
            out["force_preprocess_cfg"] = dict(self.preprocess)
        return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def sha256_file(path: str, block: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------ resolving
def resolve_weights(model: str, pretrained: Optional[str]) -> Optional[Weights]:
    """On the driver, once per job: the weights of ``model`` named by ``pretrained``
    (None → random init, nothing to resolve).  Raises :class:`WeightsUnavailable`."""
    kind = weights_kind(pretrained)
    if kind == "none":
        return None
    src = str(pretrained)
    quick_gelu, preprocess = False, {}
    if kind == "tag":
        path, cfg = _fetch_tag(model, src)
        quick_gelu = bool(cfg.get("quick_gelu"))
        preprocess = {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}
    elif storage.is_uri(src) and not src.startswith("file://"):
        path = _fetch_uri(src)
    else:
        path = storage.resolve(storage.absolute(src))[1]
        if not os.path.isfile(path):
            raise WeightsUnavailable(f"CLIP weights file not found: {src}")
    w = Weights(model, src, sha256_file(path), os.path.getsize(path), path, quick_gelu, preprocess)
    log.info("CLIP weights resolved once for this job: %s at %s", w.describe(), path)
    return w


def _fetch_uri(uri: str) -> str:
    """A weights object in storage, copied once into this node's cache (kept while
    the object's size is the same)."""
    try:
        st = storage.info(uri)
    except storage.UnsupportedURI as e:
        raise WeightsUnavailable(str(e)) from None
    if st.type != storage.pafs.FileType.File:
        raise WeightsUnavailable(f"CLIP weights not found: {uri}")
    name = hashlib.sha1(uri.encode()).hexdigest()[:16] + "-" + storage.basename(uri)
    dest = os.path.join(storage.scratch_dir(), "clip-weights", "uri", name)
    if _size(dest) != st.size:
        storage.download(uri, dest)
    return dest


def _fetch_tag(model: str, tag: str) -> Tuple[str, Dict[str, Any]]:
    """The file of an open_clip pretrained tag: from the cache where it is there,
    else downloaded once; offline with nothing cached → one line, in seconds."""
    from open_clip.pretrained import download_pretrained

    from vadclip.clip.catalog import open_clip_module

    open_clip = open_clip_module()

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise WeightsUnavailable(f"unknown pretrained tag {tag!r} for {model} (known: {', '.join(tags) or 'none'}; "
                                 "or give a local weights file or a storage URI)")
    cached = _cached_tag_file(cfg)
    if cached:
        return cached, cfg
    url = _tag_url(cfg)
    how = (f"download it where there is a network (python -c \"import open_clip; "
           f"open_clip.create_model('{model}', pretrained='{tag}')\") and pass the file, or a copy in object "
           f"storage, with --clip-pretrained PATH_OR_URI")
    why = _unreachable(url)
    if why:
        raise WeightsUnavailable(f"CLIP weights {model}/{tag} are not cached here and {why}; {how}")
    try:
        path = download_pretrained(cfg)
    except Exception as e:   # every retry of the hub client failed
        raise WeightsUnavailable(f"CLIP weights {model}/{tag} could not be downloaded "
                                 f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}); "
                                 f"{how}") from None
    if not path or not os.path.isfile(path):
        raise WeightsUnavailable(f"CLIP weights {model}/{tag}: open_clip returned no file; {how}")
    return path, cfg


HF_WEIGHTS_NAME, HF_SAFE_WEIGHTS_NAME = "open_clip_pytorch_model.bin", "open_clip_model.safetensors"


def safe_alternatives(filename: str) -> List[str]:
    """The safetensors files open_clip looks for before ``filename`` on the Hugging Face
    hub (its own rule, ``open_clip.pretrained._get_safe_alternatives``, is private: its
    answer is used where it exists, this one elsewhere; tests/test_layers.py checks the two agree)."""
    try:
        from open_clip.pretrained import _get_safe_alternatives

        return list(_get_safe_alternatives(filename))
    except (ImportError, AttributeError):
        pass
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


def _cached_tag_file(cfg: Dict[str, Any]) -> Optional[str]:
    """A tag's file where open_clip's download would find it already cached."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            hub = ""
    if hub:
        repo, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        for name in (*safe_alternatives(filename), filename):
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        return None
    url = cfg.get("url", "")
    if url:
        local = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(urllib.parse.urlparse(url).path))
        return local if os.path.isfile(local) else None
    return None


def _tag_url(cfg: Dict[str, Any]) -> str:
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        return constants.ENDPOINT
    return cfg.get("url", "")


def _unreachable(url: str) -> Optional[str]:
    """Why ``url``'s host (or the HTTPS proxy in between) cannot be reached, or None;
    a few seconds at most, where the hub client would retry for minutes."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urllib.parse.urlparse(proxy or url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return None
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as e:
        return f"{host}:{port} cannot be reached ({e.strerror or type(e).__name__})"
    return None


# ------------------------------------------------------------------- in the workers
_ACTIVE: Dict[Tuple[str, str], Weights] = {}


def activate(weights: Optional[Weights]) -> None:
    """In this process, build the CLIP of ``weights.model`` with ``weights.source``
    from ``weights`` (a file on this node) rather than from the hub or the bucket."""
    if weights is not None:
        _ACTIVE[(weights.model, weights.source)] = weights


def active(model: str, pretrained: Optional[str]) -> Optional[Weights]:
    return _ACTIVE.get((model, str(pretrained))) if pretrained else None
