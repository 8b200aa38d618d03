"""What a job is asked to process: a manifest (CSV/Parquet), a folder or a glob of
videos, local or in object storage, as one row per distinct video."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

import pyarrow as pa
import pyarrow.compute as pc

from vadclip.errors import InputError, MissingInputError
from vadclip.io import storage
from vadclip.io.ids import candidate_ids, distinct_ids
from vadclip.io.tables import read_records
from vadclip.video.decode import listed_videos

log = logging.getLogger(__name__)


MANIFEST = pa.schema([("path", pa.string()), ("video_id", pa.string()), ("label", pa.string()),
                      ("meta", pa.string()), ("listed", pa.string())])


def load_manifest(source: str) -> List[Dict[str, Optional[str]]]:
    """:func:`manifest_table` with every video's id (:func:`with_ids`), a dict per video."""
    return with_ids(manifest_table(source)).to_pylist()


def manifest_table(source: str) -> pa.Table:
    """Videos to process from a CSV/Parquet manifest (``path`` [, ``label``, ``video_id``];
    relative paths are relative to the manifest), a directory (searched recursively) or
    a glob pattern — each local or in object storage, and so may be the videos.
    Labels are optional (an unlabeled archive is scored as is).  Any other manifest
    column (``camera``, ``site``, ``start_time``, …) travels with the video into its
    feature, score and event rows (``meta``, :func:`video_meta`).  A path
    listed twice is kept once (an error if its labels differ).

    One Arrow row per distinct video (:data:`MANIFEST`): ``video_id`` is the manifest's own
    (null where it gives none: :func:`with_ids` names the others), ``listed`` the file's
    identity as the folder's listing saw it ("" where no listing did).  A folder of
    900,000 recordings is columns here, not a Python object per recording."""
    source = storage.absolute(source)
    if storage.isdir(source):
        listed = listed_videos(source)       # each video's identity too: a re-run needs no request per file
        n = listed.num_rows
        if not n:
            raise MissingInputError(f"{source}: no video files under this directory")
        return pa.table([listed["path"], pa.nulls(n, pa.string()), pa.nulls(n, pa.string()),
                         pa.repeat(pa.scalar("", pa.string()), n), pc.fill_null(listed["identity"], "")],
                        schema=MANIFEST)
    if source.lower().endswith((".csv", ".parquet")):
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
    out: List[Dict[str, Optional[str]]] = []
    by_path: Dict[str, Dict[str, Optional[str]]] = {}
    given: Dict[str, str] = {}
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
        by_path[path] = {"path": path, "video_id": vid or None, "label": label, "meta": video_meta(r, source),
                         "listed": ""}
        out.append(by_path[path])
    if len(out) < len(recs):
        log.warning("%s: %d duplicate entries ignored (one row per distinct video)", source, len(recs) - len(out))
    return pa.Table.from_pylist(out, schema=MANIFEST)


def with_ids(manifest: pa.Table, named: Optional[pa.Table] = None) -> pa.Table:
    """``manifest`` with every ``video_id`` filled by the one id rule (:mod:`vadclip.io.ids`).
    ``named`` (``path``, ``video_id``: what an output folder gave its videos) wins: a video
    the folder holds keeps the id its rows carry (an id rule of an earlier release
    included).  A manifest's own id stays unless the folder gives it to another path.
    Every other video takes :func:`vadclip.io.ids.distinct_ids` against all those ids, so
    only new videos cost Python work: a nightly run over an archive that is all done names
    nothing."""
    named = named if named is not None else pa.table({"path": pa.array([], pa.string()),
                                                      "video_id": pa.array([], pa.string())})
    idx = pc.index_in(manifest["path"], value_set=named["path"])
    vid = pc.coalesce(pc.take(named["video_id"], idx), manifest["video_id"])
    # a manifest's own id that the folder gives another path is no longer free
    clash = pc.and_(pc.is_null(idx), pc.is_in(manifest["video_id"], value_set=named["video_id"]))
    vid = pc.if_else(pc.fill_null(clash, False), pa.scalar(None, pa.string()), vid)
    free = pc.is_null(vid)
    if pc.any(free).as_py():
        paths = manifest["path"].filter(free).to_pylist()
        # the ids these paths could take, at any depth: only those of the named videos matter
        could = pa.array(sorted({c for p in paths for c in candidate_ids(p)}), pa.string())
        named_ids = pa.concat_tables([named.select(["path", "video_id"]),
                                      pa.table({"path": manifest["path"], "video_id": vid})])
        named_ids = named_ids.filter(pc.fill_null(pc.is_in(named_ids["video_id"], value_set=could), False))
        ids = distinct_ids(paths, dict(zip(named_ids["video_id"].to_pylist(), named_ids["path"].to_pylist())))
        fill = pa.array([ids[p] for p in paths], pa.string())
        got = pc.replace_with_mask(vid.combine_chunks() if isinstance(vid, pa.ChunkedArray) else vid,
                                   free.combine_chunks() if isinstance(free, pa.ChunkedArray) else free, fill)
        vid = got
    return manifest.set_column(manifest.schema.get_field_index("video_id"), "video_id", vid)


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

