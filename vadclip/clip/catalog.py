"""open_clip's model catalogue: the package imported, the project's own model configs
(the tiny test CLIP, ``configs/``) registered on first use, and a model's config read
without building anything."""
from __future__ import annotations

import logging
import os

from pathlib import Path
from typing import Any, Dict, Optional

from vadclip.errors import InputError

# the project's own open_clip model configs (the tiny test CLIP), registered once per process
CONFIG_DIR = Path(__file__).parent / "configs"


class _OpenClipInfo(logging.Filter):
    """open_clip logs how it builds each model at INFO on the root logger (ten lines per
    encoder and training worker): kept out of the job's output unless VADCLIP_VERBOSE=1."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "open_clip" not in record.pathname.replace("\\", "/")


_QUIET = _OpenClipInfo()


def open_clip_module():
    """open_clip, with the project's model configs registered (once, on first use)."""
    import open_clip

    if CONFIG_DIR not in getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", []):
        open_clip.add_model_config(CONFIG_DIR)
    root = logging.getLogger()
    if os.environ.get("VADCLIP_VERBOSE") != "1" and _QUIET not in root.filters:
        root.addFilter(_QUIET)
    return open_clip


def clip_embed_dim(model_name: str, model_kwargs: Optional[Dict[str, Any]] = None) -> int:
    """The feature dimension of an open_clip model, from its config (nothing is built)."""
    if model_kwargs and "embed_dim" in model_kwargs:
        return int(model_kwargs["embed_dim"])
    return int(model_config(model_name)["embed_dim"])


def model_config(model_name: str) -> Dict[str, Any]:
    """open_clip's config of ``model_name``; an unknown name is a one-line :class:`InputError`."""
    open_clip = open_clip_module()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise InputError(f"unknown open_clip model {model_name!r} (see open_clip.list_models())")
    return cfg
