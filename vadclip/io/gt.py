"""Frame-level ground truth: a table of anomalous frame intervals per video
(``video_id, start_frame, end_frame[, label]``, end exclusive) read from Parquet or
CSV, and converters from the UCF-Crime ``Temporal_Anomaly_Annotation.txt`` and the
XD-Violence ``annotations.txt`` formats."""
from __future__ import annotations

import io
import logging
import re
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from vadclip.io import storage
from vadclip.errors import InputError
from vadclip.io.ids import named_id, video_id
from vadclip.io.tables import read_records

GT_SCHEMA = pa.schema([("video_id", pa.string()), ("start_frame", pa.int64()),
                       ("end_frame", pa.int64()), ("label", pa.string())])

Intervals = Dict[str, List[Tuple[int, int, Optional[str]]]]

log = logging.getLogger(__name__)


class GroundTruthError(InputError):
    pass




def write_gt(rows: Sequence[Dict], path: str) -> None:
    """A ground-truth table as Parquet (or CSV by its name), local or in object storage."""
    table = pa.Table.from_pylist([{"video_id": r["video_id"], "start_frame": int(r["start_frame"]),
                                   "end_frame": int(r["end_frame"]), "label": r.get("label")} for r in rows],
                                 schema=GT_SCHEMA)
    sink = pa.BufferOutputStream()
    if path.endswith(".csv"):
        import pyarrow.csv as pacsv
        pacsv.write_csv(table, sink)
    else:
        pq.write_table(table, sink)
    storage.write_bytes(path, sink.getvalue().to_pybytes())


def read_gt(path: str) -> Intervals:
    """Read a ground-truth table → {video_id: [(start, end, label), ...]}."""
    try:
        recs = read_records(path, "ground truth")
    except (FileNotFoundError, ValueError) as exc:
        raise GroundTruthError(str(exc)) from exc
    out: Intervals = defaultdict(list)
    for i, r in enumerate(recs):
        try:
            vid = named_id(r["video_id"])
            s, e = int(r["start_frame"]), int(r["end_frame"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GroundTruthError(f"{path}: row {i}: needs video_id,start_frame,end_frame ({exc})") from exc
        if e < s:
            raise GroundTruthError(f"{path}: row {i} ({vid}): end_frame {e} < start_frame {s}")
        if e > s:
            out[vid].append((s, e, (r.get("label") or None)))
    return dict(out)


def intervals_of(gt: Intervals, vid: str) -> List[Tuple[int, int, Optional[str]]]:
    """The ground-truth intervals of the video ``vid`` (a feature or score row's id,
    under the one id rule of :mod:`vadclip.io.ids`)."""
    return gt.get(vid) or gt.get(named_id(vid)) or []


def check_matches(gt: Intervals, gt_path: str, video_ids: Sequence[str], what: str = "the scored videos") -> int:
    """How many of the ground truth's videos are among ``video_ids``.  None of them (a
    ground truth for other videos, or names under another id rule) is a one-line
    :class:`GroundTruthError` naming the file and three names of each side; some of
    them is a warning with the count (the others are not evaluated)."""
    ids = set(video_ids)
    ids |= {named_id(v) for v in ids}
    named = sorted(gt)
    found = [v for v in named if v in ids]
    if named and not found:
        raise GroundTruthError(
            f"{gt_path}: none of its {len(named)} videos is among {what} ({len(set(video_ids))}); it names "
            f"{', '.join(named[:3])}{', …' if len(named) > 3 else ''} while the videos are "
            f"{', '.join(sorted(set(video_ids))[:3]) or 'none'}{', …' if len(set(video_ids)) > 3 else ''}")
    if len(found) < len(named):
        log.warning("%s: %d of its %d videos are not among %s; they are not evaluated", gt_path,
                    len(named) - len(found), len(named), what)
    return len(found)


def _annotation_lines(txt_path: str):
    """(line number, whitespace-split fields) of each non-blank line of an annotation file."""
    if not storage.isfile(txt_path):
        raise GroundTruthError(f"annotation file not found: {txt_path}")
    with io.StringIO(storage.read_text(txt_path)) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if parts:
                yield n, parts


def convert_ucf_annotations(txt_path: str) -> List[Dict]:
    """UCF-Crime ``Temporal_Anomaly_Annotation.txt``: ``name  class  s1  e1  s2  e2``
    with -1 for a missing second event; Normal videos get no interval."""
    rows = []
    for n, parts in _annotation_lines(txt_path):
        if len(parts) < 6:
            raise GroundTruthError(f"{txt_path}:{n}: expected 6 fields, got {len(parts)}")
        name, cls = video_id(parts[0]), parts[1]
        for s, e in ((parts[2], parts[3]), (parts[4], parts[5])):
            s, e = int(s), int(e)
            if s >= 0 and e > s and cls != "Normal":
                rows.append({"video_id": name, "start_frame": s, "end_frame": e, "label": cls})
    return rows


def convert_xd_annotations(txt_path: str) -> List[Dict]:
    """XD-Violence annotations, either file of the official release:

    * ``annotations.txt``: ``name s1 e1 s2 e2 ...`` — merged segments; each gets the
      video's label from the ``label_XX`` part of its name;
    * ``annotations_multiclasses.txt``: ``name C1 s1 e1 C2 s2 e2 ...`` — segments split
      by class, each with its own class (what the official fine-grained mAP uses).

    The format is recognised per line (a class code or a number after the name)."""
    rows = []
    for n, parts in _annotation_lines(txt_path):
        name = video_id(parts[0])
        rest = parts[1:]
        if rest and not rest[0].lstrip("-").isdigit():           # multiclass triplets
            if len(rest) % 3:
                raise GroundTruthError(f"{txt_path}:{n}: expected a name and class/start/end triplets")
            segs = [(rest[j], rest[j + 1], rest[j + 2]) for j in range(0, len(rest), 3)]
        else:
            if len(rest) % 2:
                raise GroundTruthError(f"{txt_path}:{n}: expected a name and start/end pairs")
            m = re.search(r"label_([A-Z0-9-]+)", name)
            segs = [(m.group(1) if m else None, rest[j], rest[j + 1]) for j in range(0, len(rest), 2)]
        for label, s, e in segs:
            try:
                s, e = int(s), int(e)
            except ValueError:
                raise GroundTruthError(f"{txt_path}:{n}: frame numbers expected, got {s!r} {e!r}") from None
            if e > s:
                rows.append({"video_id": name, "start_frame": s, "end_frame": e, "label": label})
    return rows
