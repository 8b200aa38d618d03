"""The one video-id rule (no torch, no ray): what a video is called in feature rows,
score rows, manifests, ground truth, evaluation and the report.

``video_id(name)`` is the basename without its extension, where the extension is one
the project reads (a video container, or ``.npy`` for the official features, whose
``__K`` crop suffix is dropped too).  Any other dot stays part of the name: the
official XD-Violence names (``A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_A``)
carry dots and no extension.

A name that says nothing of its video — digits and punctuation only, as cameras and
DVRs name files by hour, date or sequence (``00.mp4``, ``0001.mp4``,
``2026-11-01T13.ts``) — takes its parent folders up to and including the nearest one
that has a letter (at most four): ``cam1/2026-11-01/00``, ``cam0/0001``.  So the id is
a function of the path alone: the same whatever else the archive holds, in whatever
order it is listed.  Two different paths that still get one id are told apart by
:func:`distinct_ids` (more parent folders, for both)."""
from __future__ import annotations

import posixpath
import re
from typing import Dict, List, Optional, Sequence

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


_NAMELESS = re.compile(r"^[\d\W_]*$")     # no letter: an hour, a date, a sequence number
MAX_PARENTS = 4


def _parts(path: str) -> List[str]:
    p = str(path).strip().replace("\\", "/")
    if "://" in p:
        p = p.split("://", 1)[1]          # the bucket stays, as the first folder
    return [x for x in p.split("/") if x and x != "."]


def path_video_id(path: str, extra: int = 0) -> str:
    """The id of the video at ``path`` (see the module's rule); ``extra`` more parent
    folders in front, to tell it from another path with the same id."""
    parts = _parts(path)
    if not parts:
        return video_id(path)
    vid, parents = video_id(parts[-1]), parts[:-1]
    k = 0
    if _NAMELESS.match(vid):
        for folder in reversed(parents):
            k += 1
            if not _NAMELESS.match(folder) or k >= MAX_PARENTS:
                break
    k = min(len(parents), k + extra)
    return "/".join(parents[len(parents) - k:] + [vid])


def distinct_ids(paths: Sequence[str], taken: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``{path: id}`` for ``paths`` by :func:`path_video_id`, no id shared by two paths:
    paths that get one id all take more parent folders until they differ (whatever
    order they come in); ``taken`` (``{id: path}`` of videos named before, in an output
    folder) keeps its ids, and a new path that would take one of them takes more
    folders instead.  The last resort is the whole path (with its extension)."""
    taken = dict(taken or {})
    out: Dict[str, str] = {}
    pending = {p: 0 for p in dict.fromkeys(paths)}
    while pending:
        ids = {p: (path_video_id(p, x) if x <= len(_parts(p)) else "/".join(_parts(p)) or p)
               for p, x in pending.items()}
        groups: Dict[str, List[str]] = {}
        for p, i in ids.items():
            groups.setdefault(i, []).append(p)
        nxt = {}
        for i, ps in groups.items():
            clash = len(ps) > 1 or (i in taken and taken[i] != ps[0])
            if clash and any(pending[p] <= len(_parts(p)) for p in ps):
                nxt.update({p: pending[p] + 1 for p in ps})
            else:
                for p in ps:
                    out[p] = i
                    taken.setdefault(i, p)
        pending = nxt
    return out


def candidate_ids(path: str) -> List[str]:
    """Every id :func:`distinct_ids` may give ``path``: its own, with each number of
    parent folders in front, and the last resort."""
    n = len(_parts(path))
    return [path_video_id(path, x) for x in range(n + 1)] + ["/".join(_parts(path)) or path]


def named_id(name: str) -> str:
    """A video named in ground truth or a list, as an id: a file name or path (it ends
    in an extension the project reads) by :func:`path_video_id`; anything else is an id
    already and stays as it is (``cam1/2026-11-01/00``, an XD-Violence name)."""
    text = str(name).strip()
    base = posixpath.basename(text.replace("\\", "/"))
    if _CROP_SUFFIX.search(base) or posixpath.splitext(base)[1].lower() in VIDEO_EXTENSIONS + FEATURE_EXTENSIONS:
        return path_video_id(text)
    return text
