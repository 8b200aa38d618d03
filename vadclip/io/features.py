"""The project's Parquet feature format, per-sample preprocessing, and the importer
for the officially released VadCLIP features (``NAME__K.npy`` [T, 512] + CSV).

A feature row is one video × crop:
  video_id, path, label, crop, fps, num_frames, snippet_count, feature_dim,
  features (list<float32>, row-major [snippet_count × feature_dim])
"""
from __future__ import annotations

import io
import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from vadclip.io import storage
from vadclip.io.ids import video_id
from vadclip.errors import InputError
from vadclip.io.parts import dataset_files, read_table, table_bytes

FEATURE_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("path", pa.string()),
    ("label", pa.string()),
    ("crop", pa.int32()),
    ("fps", pa.float64()),
    ("num_frames", pa.int64()),
    ("snippet_count", pa.int64()),
    ("feature_dim", pa.int32()),
    ("features", pa.list_(pa.float32())),
    # the manifest's other columns (camera, site, start_time, …) as JSON text, "" for none;
    # a set written before this column reads it as null (:func:`meta_of` gives {})
    ("meta", pa.string()),
    ("decoder", pa.string()),    # what decoded the video (torchcodec, decord, pyav); null where not extracted here
    # a variable-frame-rate video: where each snippet starts, and the last one ends
    # (snippet_count + 1 times in s, from its frames' timestamps); null where
    # snippet i starts at i * snippet_len / fps (constant rate, or a set written before)
    ("snippet_times", pa.list_(pa.float64())),
    # a truncated file: the frames its container lists (num_frames: those that decode); null when all decode
    ("frames_listed", pa.int64()),
    # a long recording is kept in segments (rows of at most --segment-snippets snippets, so a
    # writer's memory never grows with a recording's length): the index of this row's first
    # snippet; null for a video kept whole.  A recording's segments are committed together
    # (vadclip.io.parts); its last segment holds the video's fps, num_frames, frames_listed
    # and, for a variable-frame-rate file, all its snippet_times.  whole_videos() joins them.
    ("snippet_start", pa.int64()),
    # what the video's file was when its rows were made (size:mtime, or the store's ETag): a
    # re-run extracts it again when its listing says otherwise; null where the set was not
    # extracted here (imported), and in parts written before 2026-12-07, which kept it in
    # their schema metadata (vadclip.io.parts.read_identities reads both)
    ("input_identity", pa.string()),
])

ERROR_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("video_id", pa.string()),
    ("stage", pa.string()),
    ("error", pa.string()),
])


class FeatureError(InputError):
    """A feature array or row that cannot be used; the message names the source."""


def check_features(arr: np.ndarray, source: str, expected_dim: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise FeatureError(f"{source}: features must be 2-D [snippets, dim], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise FeatureError(f"{source}: empty video features (0 snippets)")
    if expected_dim is not None and arr.shape[1] != expected_dim:
        raise FeatureError(f"{source}: wrong feature dim {arr.shape[1]}, expected {expected_dim}")
    if not np.all(np.isfinite(arr)):
        raise FeatureError(f"{source}: features contain NaN or Inf")
    return arr.astype(np.float32, copy=False)


def feature_row(video_id: str, path: str, label: Optional[str], crop: int, fps: float, num_frames: int,
                features: np.ndarray, meta: Any = None, snippet_times: Optional[Sequence[float]] = None,
                frames_listed: Optional[int] = None, snippet_start: Optional[int] = None) -> Dict:
    f = np.ascontiguousarray(features, dtype=np.float32)
    if snippet_times is not None and len(snippet_times) != (snippet_start or 0) + f.shape[0] + 1:
        raise FeatureError(f"{path}: {len(snippet_times)} snippet times for {(snippet_start or 0) + f.shape[0]} "
                           f"snippets (expected {(snippet_start or 0) + f.shape[0] + 1})")
    return {
        "video_id": video_id, "path": path, "label": label, "crop": int(crop), "fps": float(fps),
        "num_frames": int(num_frames), "snippet_count": int(f.shape[0]), "feature_dim": int(f.shape[1]),
        "features": f.reshape(-1), "meta": meta_text(meta),
        "snippet_times": None if snippet_times is None else [float(t) for t in snippet_times],
        "frames_listed": None if not frames_listed else int(frames_listed),
        "snippet_start": None if snippet_start is None else int(snippet_start),
    }


def whole_videos(rows: Sequence[Dict]) -> List[Dict]:
    """Feature rows as whole videos: the segment rows of a long recording (``snippet_start``
    set) joined in order into one row per video × crop, with the last segment's
    video-level values; other rows as they are.  A recording missing a segment raises a
    :class:`FeatureError` naming it."""
    out: List[Dict] = []
    segments: Dict[Tuple[str, int], List[Dict]] = {}
    for r in rows:
        if r.get("snippet_start") is None:
            out.append(r)
        else:
            segments.setdefault((r["video_id"], int(r["crop"])), []).append(r)
    for (vid, crop), segs in segments.items():
        segs.sort(key=lambda r: int(r["snippet_start"]))
        at = 0
        for r in segs:
            if int(r["snippet_start"]) != at:
                raise FeatureError(f"{r['path']} ({vid}, crop {crop}): its segments do not join (one starts at "
                                   f"snippet {r['snippet_start']}, expected {at})")
            at += int(r["snippet_count"])
        whole = dict(segs[-1], snippet_start=None, snippet_count=at)
        if "features" in whole:
            whole["features"] = np.concatenate([np.asarray(r["features"], np.float32).reshape(-1) for r in segs])
        out.append(whole)
    return out


def times_of(row: Dict) -> Optional[np.ndarray]:
    """A feature (or score) row's snippet times (``snippet_count + 1`` seconds), or None
    where it has none (constant frame rate, or a set written before the column): the
    times are then ``i * snippet_len / fps``."""
    t = row.get("snippet_times") if hasattr(row, "get") else None
    if t is None or (isinstance(t, float) and np.isnan(t)):
        return None
    t = np.asarray(t, np.float64)
    return t if t.ndim == 1 and len(t) >= 2 else None


def meta_of(value: Any) -> Dict[str, str]:
    """The ``meta`` of a row as a dict ({} for none, or a row written before it existed):
    what a stored row keeps (JSON text), or what crosses between a job's stages (a dict,
    as Ray Data hands an Arrow struct back; a map's (key, value) pairs)."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple, np.ndarray)):
        pairs = ((p["key"], p["value"]) if isinstance(p, dict) else p for p in value)
        return {str(k): v for k, v in pairs if v is not None}
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or not value:
        return {}
    try:
        got = json.loads(value)
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def meta_text(value: Any) -> str:
    """``meta`` as the stored rows keep it: JSON text, keys sorted ("" for none).  Only
    the writers make it: between stages ``meta`` is a map or struct column, a dict per row."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):       # a stored row's, as it is
        return value
    m = meta_of(value)
    return json.dumps(m, sort_keys=True) if m else ""


META_MAP = pa.map_(pa.string(), pa.string())


def as_read_by_a_stage(schema: pa.Schema) -> pa.Schema:
    """``schema`` (a stored table's) with ``meta`` a map column: how rows read back from a
    table enter a stage (:func:`vadclip.jobs.output.conform` turns the text into the map)."""
    i = schema.get_field_index("meta")
    return schema if i < 0 else schema.set(i, pa.field("meta", META_MAP))


def meta_map(texts) -> pa.Array:
    """A column of stored ``meta`` texts as an Arrow map column (what a job's first stage
    receives): the manifest's columns of each video as key → value, no JSON."""
    values = texts.to_pylist() if hasattr(texts, "to_pylist") else list(texts)
    return pa.array([sorted(meta_of(t).items()) for t in values], META_MAP)


def row_features(row: Dict) -> np.ndarray:
    """[snippet_count, feature_dim] float32 array of a feature row (dict or pandas row)."""
    flat = np.asarray(row["features"], dtype=np.float32)
    t, d = int(row["snippet_count"]), int(row["feature_dim"])
    if flat.size != t * d:
        raise FeatureError(f"{row.get('video_id', '?')}: features hold {flat.size} values, "
                           f"expected {t}x{d}")
    return flat.reshape(t, d)


def write_feature_table(rows: Sequence[Dict], path: str, prov: Optional[Dict] = None) -> None:
    """One Parquet file (local or in object storage) holding ``rows`` (and their
    provenance ``prov`` in its metadata, :mod:`vadclip.io.provenance`)."""
    from vadclip.io.provenance import with_provenance

    table = pa.Table.from_pylist([dict(r, features=np.asarray(r["features"]).reshape(-1)) for r in rows],
                                 schema=with_provenance(FEATURE_SCHEMA, prov))
    storage.write_bytes(path, table_bytes(table))


META_COLUMNS = ["video_id", "crop", "label", "feature_dim"]


def feature_meta(path: str, what: str = "feature set") -> pa.Table:
    """The small columns of a feature set, one row per video × crop (a long recording's
    first segment stands for it, with ``segmented`` true); one without a label column (an
    archive written by another tool) reads as unlabeled."""
    import pyarrow.compute as pc

    try:
        t = read_table(path, columns=META_COLUMNS, what=what, optional=["snippet_start"])
    except pa.ArrowInvalid as exc:
        if "label" not in str(exc):
            raise
        t = read_table(path, columns=[c for c in META_COLUMNS if c != "label"], what=what, optional=["snippet_start"])
        t = t.append_column("label", pa.nulls(t.num_rows, pa.string()))
    if "snippet_start" not in t.column_names:      # a set written before segments
        return t.select(META_COLUMNS).append_column("segmented", pa.array([False] * t.num_rows))
    start = t.column("snippet_start")
    t = t.filter(pc.fill_null(pc.equal(start, 0), True))
    segmented = pc.fill_null(pc.equal(t.column("snippet_start"), 0), False)
    return t.select(META_COLUMNS).append_column("segmented", segmented)


def check_feature_set(path: str, expected_dim: Optional[int] = None, crop: Optional[int] = None,
                      what: str = "feature set") -> Dict[str, object]:
    """Checks that need no worker, from the small columns (``META_COLUMNS``, read once):
    the set exists and has rows, some rows have the model's feature dimension, and the
    requested crop is present.  Returns the row count, dimensions and crops found, and
    the small columns as ``meta``."""
    files = dataset_files(path, what)
    try:
        t = feature_meta(path, what) if files else pa.table(
            {"video_id": pa.array([], pa.string()), "crop": pa.array([], pa.int32()),
             "label": pa.array([], pa.string()), "feature_dim": pa.array([], pa.int32())})
    except (pa.ArrowInvalid, ValueError, KeyError) as exc:
        raise FeatureError(f"{path}: not a vadclip {what} ({type(exc).__name__}: {exc})") from exc
    if t.num_rows == 0:
        raise FeatureError(f"{path}: the {what} has no rows")
    dims = sorted(set(t.column("feature_dim").to_pylist()))
    crops = sorted(set(t.column("crop").to_pylist()))
    if expected_dim is not None and expected_dim not in dims:
        raise FeatureError(f"{path}: features have dimension {dims[0] if len(dims) == 1 else dims}, the model "
                           f"expects {expected_dim} (extracted with another CLIP?)")
    if crop is not None and crop not in crops:
        raise FeatureError(f"{path}: no rows for crop {crop}; the {what} holds crops {crops}")
    return {"rows": t.num_rows, "dims": dims, "crops": crops, "meta": t}


def read_feature_rows(path: str, columns: Optional[List[str]] = None) -> List[Dict]:
    """All rows of a feature set (a Parquet file or directory) as dicts, one per video ×
    crop (a long recording's segments joined: :func:`whole_videos`)."""
    optional = [c for c in ("snippet_start", "path") if c not in columns] if columns is not None else ()
    return whole_videos(read_table(path, columns=columns, what="feature set", optional=optional).to_pylist())


# --------------------------------------------------------------------------- preprocessing
def uniform_extract(feat: np.ndarray, t_max: int) -> np.ndarray:
    """Average-pool [T, D] to [t_max, D] over ``linspace(0, T, t_max+1)`` bins (official
    ``uniform_extract``); an empty bin takes the snippet at its start."""
    t = feat.shape[0]
    r = np.linspace(0, t, t_max + 1, dtype=np.int32)
    csum = np.concatenate([np.zeros((1, feat.shape[1]), np.float64), np.cumsum(feat, 0, dtype=np.float64)])
    counts = (r[1:] - r[:-1])[:, None]
    sums = csum[r[1:]] - csum[r[:-1]]
    empty = counts[:, 0] == 0
    out = np.where(empty[:, None], feat[np.minimum(r[:-1], t - 1)], sums / np.maximum(counts, 1))
    return out.astype(np.float32)


def pad_to(feat: np.ndarray, length: int) -> np.ndarray:
    if feat.shape[0] >= length:
        return feat
    return np.pad(feat, ((0, length - feat.shape[0]), (0, 0)))


def process_train(feat: np.ndarray, visual_length: int) -> Tuple[np.ndarray, int]:
    """Training view: uniform average-pool to ``visual_length`` or zero-pad; returns
    (features [visual_length, D], true length)."""
    if feat.shape[0] > visual_length:
        return uniform_extract(feat, visual_length), visual_length
    return pad_to(feat, visual_length).astype(np.float32, copy=False), feat.shape[0]


def split_chunks(feat: np.ndarray, visual_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """Evaluation view: split [T, D] into ceil(T / L) chunks [n, L, D] (last padded)
    with their true lengths [n]."""
    t, d = feat.shape
    n = max(1, -(-t // visual_length))
    out = np.zeros((n * visual_length, d), np.float32)
    out[:t] = feat
    lengths = np.full(n, visual_length, np.int64)
    lengths[-1] = t - (n - 1) * visual_length
    return out.reshape(n, visual_length, d), lengths


# ------------------------------------------------------------------- official features
_OFFICIAL_NAME = re.compile(r"^(?P<name>.+)__(?P<crop>\d+)\.npy$")


def parse_official_name(path: str) -> Tuple[str, int]:
    m = _OFFICIAL_NAME.match(storage.basename(path))
    if not m:
        raise FeatureError(f"{path}: not an official feature file name (expected NAME__K.npy)")
    return video_id(path), int(m.group("crop"))   # the name before __K, by the one id rule


def _resolve(path: str, roots: Sequence[str]) -> str:
    if storage.isfile(path):
        return path
    for root in roots:
        # the official lists hold the authors' absolute paths: try them under each root
        # as given, by file name, and by class folder + file name (UCFClipFeatures/Abuse/…)
        name = storage.basename(path)
        folder = storage.basename(path[:-len(name)].rstrip("/")) if "/" in path else ""
        for cand in (storage.join(root, path.lstrip("/")), storage.join(root, name),
                     storage.join(root, folder, name)):
            if storage.isfile(cand):
                return cand
    raise FeatureError(f"{path}: feature file not found (searched {list(roots) or 'as given'})")


def import_release(csv_path: str, out_path: str, cfg=None, roots: Sequence[str] = (),
                   crops: Optional[Sequence[int]] = None, expected_dim: Optional[int] = 512,
                   snippet_len: int = 16, fps: float = 30.0) -> Dict[str, int]:
    """Convert the released features (a CSV list ``path,label`` + ``NAME__K.npy`` files) into a Parquet
    feature set (``fps`` is recorded for segment times: 30 for UCF-Crime, 24 for
    XD-Violence).  Labels are checked against ``cfg`` when given.  Files that fail are
    reported in ``<out_path>.errors.parquet`` and skipped; returns counts."""
    import csv

    csv_path, out_path = storage.absolute(csv_path), storage.absolute(out_path)
    roots = [storage.absolute(r) for r in roots] or [storage.dirname(csv_path)]
    if not storage.isfile(csv_path):
        raise FeatureError(f"official list not found: {csv_path}")
    rows, errors = [], []
    with io.StringIO(storage.read_text(csv_path), newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise FeatureError(f"{csv_path}: expected CSV columns 'path,label', got {reader.fieldnames}")
        for rec in reader:
            p, label = rec["path"], rec["label"]
            try:
                name, crop = parse_official_name(p)
                if crops is not None and crop not in crops:
                    continue
                if cfg is not None:
                    cfg.label_vector(label)
                fp = _resolve(p, roots)
                arr = check_features(np.load(io.BytesIO(storage.read_bytes(fp))), fp, expected_dim)
                rows.append(feature_row(name, fp, label, crop, fps, arr.shape[0] * snippet_len, arr))
            except (FeatureError, ValueError, OSError) as e:
                errors.append({"path": p, "video_id": None, "stage": "import", "error": str(e)})
    from vadclip._version import __version__
    from vadclip.io.provenance import official

    write_feature_table(rows, out_path, official(sorted({r["crop"] for r in rows}), __version__))
    if errors:
        storage.write_bytes(out_path + ".errors.parquet",
                            table_bytes(pa.Table.from_pylist(errors, schema=ERROR_SCHEMA)))
    return {"rows": len(rows), "errors": len(errors)}


import_official = import_release   # the older name
