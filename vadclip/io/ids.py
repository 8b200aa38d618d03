"""The one video-id rule (no torch, no ray): what a video is called in feature rows,
score rows, manifests, ground truth, evaluation and the report.

``video_id(name)`` is the basename without its extension, where the extension is one
the project reads (a video container, or ``.npy`` for the official features, whose
``__K`` crop suffix is dropped too).  Any other dot stays part of the name: the
official XD-Violence names (``A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_A``)
carry dots and no extension."""
from __future__ import annotations

import posixpath
import re

# every container a folder or glob is searched for, and whose extension an id drops
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                    ".m2ts", ".mts", ".3gp", ".ogv", ".mxf", ".vob", ".asf")
FEATURE_EXTENSIONS = (".npy",)
_CROP_SUFFIX = re.compile(r"__\d+(\.npy)?$", re.I)


def video_id(name: str) -> str:
    """``cam1`` of ``s3://b/x/cam1.m4v``, ``cam2.ts``, ``C:\\v\\cam1.MP4`` or ``cam1__5.npy``."""
    base = posixpath.basename(str(name).strip().replace("\\", "/"))
    base = _CROP_SUFFIX.sub("", base)
    root, ext = posixpath.splitext(base)
    return root if root and ext.lower() in VIDEO_EXTENSIONS + FEATURE_EXTENSIONS else base
