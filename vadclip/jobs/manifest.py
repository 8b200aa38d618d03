"""What a job is asked to process: a manifest (CSV/Parquet), a folder or a glob of
videos, local or in object storage, as one row per distinct video."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

from vadclip.errors import InputError, MissingInputError
from vadclip.io import storage
from vadclip.io.ids import distinct_ids
from vadclip.io.tables import read_records
from vadclip.video.decode import listed_videos

log = logging.getLogger(__name__)


def load_manifest(source: str) -> List[Dict[str, Optional[str]]]:
    """Videos to process from a CSV/Parquet manifest (``path`` [, ``label``, ``video_id``];
    relative paths are relative to the manifest), a directory (searched recursively) or
    a glob pattern — each local or in object storage, and so may be the videos.
    Labels are optional (an unlabeled archive is scored as is).  Any other manifest
    column (``camera``, ``site``, ``start_time``, …) travels with the video into its
    feature, score and event rows (``meta``, :func:`video_meta`).  A path
    listed twice is kept once (an error if its labels differ); different paths with the
    same id are told apart by more of their folders (:func:`vadclip.io.ids.distinct_ids`)."""
    source = storage.absolute(source)
    listed: Dict[str, Optional[str]] = {}
    if storage.isdir(source):
        listed = listed_videos(source)       # each video's identity too: a re-run needs no request per file
        recs = [{"path": p} for p in sorted(listed)]
        if not recs:
            raise MissingInputError(f"{source}: no video files under this directory")
    elif source.lower().endswith((".csv", ".parquet")):
        recs = read_records(source, "manifest")
        if recs and "path" not in recs[0]:
            raise InputError(f"{source}: manifest needs a 'path' column, has {sorted(recs[0])}")
        base = storage.dirname(source)
        for r in recs:
            p = str(r["path"])
            r["path"] = p if storage.is_uri(p) or p.startswith("/") else storage.join(base, p)
    else:
        paths = storage.glob(source)
        if not paths:
            raise MissingInputError(f"no videos match {source!r}")
        recs = [{"path": p} for p in paths]
    out, by_path, given = [], {}, {}
    for r in recs:
        path = storage.absolute(str(r["path"]))
        label = r.get("label")
        label = None if label is None or str(label) == "" else str(label)
        if path in by_path:  # listed twice: one row per distinct video
            if by_path[path]["label"] != label:
                raise InputError(f"{source}: {path} is listed twice with different labels "
                                 f"({by_path[path]['label']!r} and {label!r})")
            continue
        vid = r.get("video_id")
        if vid is not None and str(vid) != "":       # the manifest's own id wins, and must be unique
            vid = str(vid)
            if vid in given and given[vid] != path:
                raise InputError(f"{source}: video_id {vid!r} is given to two videos ({given[vid]} and {path})")
            given[vid] = path
        # "listed": size:mtime as the folder's listing saw it ("" where no listing did)
        by_path[path] = {"path": path, "video_id": vid or None, "label": label, "meta": video_meta(r, source),
                         "listed": listed.get(path) or ""}
        out.append(by_path[path])
    if len(out) < len(recs):
        log.warning("%s: %d duplicate entries ignored (one row per distinct video)", source, len(recs) - len(out))
    assign_ids(out, given)
    return out


def assign_ids(items: List[Dict[str, Optional[str]]], taken: Optional[Dict[str, str]] = None) -> None:
    """Give each item without a ``video_id`` the one rule's id (:mod:`vadclip.io.ids`),
    never one that ``taken`` (``{id: path}``: the manifest's own ids, those an output
    folder already holds) gives another path, nor one another item gets."""
    free = [it["path"] for it in items if not it.get("video_id")]
    ids = distinct_ids(free, {**(taken or {}), **{it["video_id"]: it["path"] for it in items if it.get("video_id")}})
    for it in items:
        if not it.get("video_id"):
            it["video_id"] = ids[it["path"]]


RESERVED = ("path", "label", "video_id")


def video_meta(record: Dict[str, Any], source: str) -> str:
    """A manifest row's other columns as the ``meta`` JSON text of its rows (keys sorted,
    values as text, empty cells left out; "" for none).  ``start_time``, the recording's
    start, must be an ISO 8601 time (one without a zone is taken as UTC); it is kept as
    UTC ``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`` and gives events their wall-clock times."""
    meta = {}
    for k, v in record.items():
        if k in RESERVED or v is None or (isinstance(v, float) and v != v) or str(v) == "":
            continue
        meta[str(k)] = v.isoformat() if isinstance(v, datetime) else str(v)
    if "start_time" in meta:
        meta["start_time"] = _utc(meta["start_time"], f"{source}: {record.get('path')}")
    return json.dumps(meta, sort_keys=True) if meta else ""


def _utc(text: str, where: str) -> str:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise InputError(f"{where}: start_time {text!r} is not an ISO 8601 time "
                         "(e.g. 2026-11-01T08:00:00+01:00)") from None
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.isoformat()

