"""open_clip's model catalogue: the package imported, the project's own model configs
(the tiny test CLIP, ``configs/``) registered on first use, and a model's config read
without building anything."""
from __future__ import annotations

import copy
import functools
import importlib.util
import json
import logging
import os
import sys
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


@functools.lru_cache(maxsize=1)
def _config_files() -> Dict[str, Dict[str, Any]]:
    """open_clip's model configs read as the JSON files they are (open_clip's own
    ``model_configs/`` and the project's), as open_clip reads them, without importing it
    (and torch with it): a job's driver asks a model's sizes and imports neither."""
    spec = importlib.util.find_spec("open_clip")
    dirs = [Path(d) / "model_configs" for d in (spec.submodule_search_locations or [])] if spec else []
    found: Dict[str, Dict[str, Any]] = {}
    for d in dirs + [CONFIG_DIR]:
        for f in sorted(d.glob("*.json")):
            with open(f) as fh:
                cfg = json.load(fh)
            if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
                found[f.stem] = cfg
    return found


def model_config(model_name: str) -> Dict[str, Any]:
    """open_clip's config of ``model_name``; an unknown name is a one-line :class:`InputError`.

    Where open_clip is already imported, it answers (configs a user added to it count);
    elsewhere its config files are read as JSON."""
    if "open_clip" in sys.modules:
        cfg = open_clip_module().get_model_config(model_name)
    else:
        cfg = copy.deepcopy(_config_files().get(model_name))
    if cfg is None:
        raise InputError(f"unknown open_clip model {model_name!r} (see open_clip.list_models())")
    return cfg


def check_packages(*names: str) -> None:
    """The packages a job's workers need, installed here (one line if one is missing).

    Found, not imported: a driver that only plans never pays for open_clip (and torch)."""
    for name in names:
        if _find(name) is None:
            raise InputError(f"the {name!r} package is required and is not installed; "
                             f"pip install {'av' if name == 'av' else name}")


def _find(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
