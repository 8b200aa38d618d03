"""The review report of a scoring run: one static page a person opens to see what was
flagged — ``report/index.html`` beside the scores, with its images in ``report/img``
and no outside resources (it opens from disk, from a bucket download, or as an
MLflow artifact).

* run summary: videos scored, flagged, failed, events, throughput, the model (name,
  version, alias) and the thresholds; the counts always cover the whole archive;
* a sortable table of events (video, start–end as timestamps, class, score);
* for the top-N videos (flagged ones first, then the others, by video score; N bounded, so a
  million-video archive still gives a small report): the score timeline (C-branch score, top class
  probabilities, threshold, events shaded, ground truth shaded when given) and key
  frames decoded at each event's start, peak and end.

The scores are read one part file at a time (memory does not grow with the archive);
only the N videos shown are read whole."""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import re
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vadclip.io import layout, storage

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["video_id", "path", "label", "fps", "num_frames", "snippet_count", "video_score",
                   "flagged", "events"]
MAX_EVENTS_SHOWN = 1000      # rows of the events table (the strongest events); counts cover all
KEYFRAME_EVENTS = 3          # events per video with key frames
THUMB_HEIGHT = 96


def timestamp(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{s:04.1f}"


def _safe(video_id: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", str(video_id))[:60]
    return f"{base}-{hashlib.sha1(str(video_id).encode()).hexdigest()[:6]}"


TOTALS_COLUMNS = ["flagged", "events", "num_frames", "fps"]     # and model_version where a part has it


def output_totals(scores_dir: str) -> Dict[str, int]:
    """Videos, flagged videos and events in a scores table, one part file and a few
    small columns at a time (memory does not grow with the archive), counted in Arrow."""
    from vadclip.io.parts import part_files, read_ahead, read_file, read_schema

    def read(f):
        names = read_schema(f).names
        return read_file(f, TOTALS_COLUMNS + (["model_version"] if "model_version" in names else []))

    tot = _Totals()
    for _, t in read_ahead(part_files(scores_dir), read):
        tot.add(t)
    return tot.result()


class _Totals:
    """The folder's counts, a part's table at a time (:func:`output_totals`, and the report's
    own pass over the parts, :func:`_scan`, which reads these columns too)."""

    def __init__(self) -> None:
        self.tot: Dict[str, Any] = {"videos": 0, "flagged": 0, "events": 0, "hours": 0.0}
        self.by: Dict[str, int] = {}

    def add(self, t: pa.Table) -> None:
        tot, by = self.tot, self.by
        tot["videos"] += t.num_rows
        # which model version scored how many videos (parts written before rows said: "")
        if "model_version" in t.column_names:
            for vc in pc.value_counts(pc.fill_null(t.column("model_version"), "")).to_pylist():
                by[vc["values"]] = by.get(vc["values"], 0) + int(vc["counts"])
        elif t.num_rows:
            by[""] = by.get("", 0) + t.num_rows
        tot["flagged"] += int(pc.sum(t.column("flagged")).as_py() or 0)
        tot["events"] += int(pc.sum(pc.list_value_length(t.column("events"))).as_py() or 0)
        fps = np.asarray(t.column("fps").to_numpy(zero_copy_only=False), np.float64)
        frames = np.asarray(t.column("num_frames").to_numpy(zero_copy_only=False), np.float64)
        tot["hours"] += float((frames / np.where(fps > 0, fps, 30.0)).sum() / 3600.0)

    def result(self) -> Dict[str, Any]:
        return dict(self.tot, scored_by=dict(sorted(self.by.items())))


def summary_rule(summary: Dict[str, Any]):
    """The event rule a scoring run used, from its summary (an older summary without
    the rule's fields: its threshold with the default rule's other settings)."""
    from vadclip.metrics.operating import DEFAULT_RULE, EventRule

    t = float(summary.get("threshold") if summary.get("threshold") is not None else DEFAULT_RULE.threshold)
    h = float(summary.get("hysteresis") or 0.0)
    return EventRule(t, low=t - h if h > 0 else None,
                     min_duration_s=float(summary.get("min_duration_s") or 0.0),
                     merge_gap_s=float(summary.get("merge_gap_s", DEFAULT_RULE.merge_gap_s) or 0.0))


def operating_footage(scores_dir: str, gt, snippet_len: int, labels: Optional[Dict[str, Any]] = None):
    """Every scored video as validation footage against ``gt`` (one part file at a
    time; only the snippet scores are kept).  A video is normal footage when it has no
    ground-truth interval and its label, if any, is normal as the model reads labels
    (:class:`vadclip.model.config.LabelRule`: ``labels``, the scoring run's summary's
    ``label_rule``; without one, the rows' classes, no separator)."""
    from vadclip.io.parts import part_files, read_file, read_schema
    from vadclip.metrics.operating import footage_of
    from vadclip.model.config import LabelRule

    fixed = LabelRule.from_dict(labels) if labels else None
    out = []
    for f in part_files(scores_dir):
        cols = ["video_id", "label", "fps", "num_frames", "anomaly", "classes"]
        cols += ["snippet_times"] if "snippet_times" in read_schema(f).names else []   # parts written before it
        for r in read_file(f, cols).to_pylist():
            rule = fixed or LabelRule(tuple(r["classes"] or ("Normal",)))
            out.append(footage_of(r, np.asarray(r["anomaly"], np.float64), snippet_len, gt, rule.is_normal))
    return out


SCAN_ROWS = 16384      # rows ranked and counted by one round of Arrow compute (several parts)


def _scan(scores_dir: str, top_n: int, totals: Optional[Dict[str, Any]] = None):
    """One pass over the parts: the top-N videos for pages, the strongest events (each
    with its camera and wall-clock start where the manifest gave them) and the videos,
    flagged videos and events per camera (``{}`` where no row names a camera); with
    ``totals`` (a dict), it is filled with :func:`output_totals`' counts from the same
    pass.  Parts are read 16 at once and ranked and counted with Arrow compute,
    :data:`SCAN_ROWS` rows at a time; only the candidates (at most ``top_n`` videos and
    :data:`MAX_EVENTS_SHOWN` events a round) and the distinct ``meta`` values become
    Python objects.  Each top video comes with the part it is in (``_file``)."""
    from vadclip.io.parts import part_files, read_ahead, read_file, read_schema

    def read(f):
        names = read_schema(f).names     # older parts lack meta or model_version
        return read_file(f, SUMMARY_COLUMNS + [c for c in ("meta", "model_version") if c in names])

    files = part_files(scores_dir)
    counts = _Totals()
    top: List = []
    events: List = []
    cameras: Dict[str, Dict[str, int]] = {}
    metas: Dict[Any, Dict[str, Any]] = {}
    held: List[pa.Table] = []
    n = n_ranked = 0
    for i, (f, t) in enumerate(read_ahead(files, read)):
        counts.add(t)
        if "model_version" in t.column_names:
            t = t.drop_columns(["model_version"])
        if "meta" not in t.column_names:
            t = t.append_column("meta", pa.nulls(t.num_rows, pa.string()))
        # the row's place in the whole scan breaks ties as the order of the rows does
        t = t.append_column("_n", pa.array(np.arange(n + 1, n + 1 + t.num_rows, dtype=np.int64)))
        t = t.append_column("_f", pa.array(np.full(t.num_rows, i, dtype=np.int32)))
        held.append(t)
        n += t.num_rows
        if n - n_ranked >= SCAN_ROWS or i == len(files) - 1:
            t = pa.concat_tables(held, promote_options="permissive").combine_chunks()
            held, n_ranked = [], n
            _count_cameras(t, cameras, metas)
            _top_videos(t, files, top_n, top, metas)
            _strongest_events(t, events, metas)
    if totals is not None:
        totals.update(counts.result())
    return ([r for _, r in sorted(top, key=lambda kr: kr[0], reverse=True)],
            [e for _, e in sorted(events, key=lambda kr: kr[0], reverse=True)], cameras)


def _top_videos(t: pa.Table, files: List[str], top_n: int, top: List, metas: Dict[Any, Dict[str, Any]]) -> None:
    """Keep the ``top_n`` videos for pages seen so far (``top``, a heap): flagged videos
    first, then the highest-scoring others (an archive with nothing flagged still shows how
    close it came)."""
    if top_n <= 0 or not t.num_rows:
        return
    ranked = pa.table({"flagged": pc.fill_null(t["flagged"], False),
                       "video_score": pc.fill_null(t["video_score"], float("-inf")), "_n": t["_n"]})
    idx = pc.select_k_unstable(ranked, top_n, [("flagged", "descending"), ("video_score", "descending"),
                                              ("_n", "descending")])
    for r in t.take(idx).to_pylist():
        key = (bool(r["flagged"]), float(r["video_score"] if r["video_score"] is not None else float("-inf")),
               int(r.pop("_n")))
        r.update(_file=files[r.pop("_f")], **_camera_and_start(r.pop("meta"), metas))
        if len(top) < top_n:
            heapq.heappush(top, (key, r))
        elif key > top[0][0]:
            heapq.heapreplace(top, (key, r))


def _camera_and_start(meta: Any, metas: Dict[Any, Dict[str, Any]]) -> Dict[str, Any]:
    """A row's camera and recording start from its ``meta`` text, each distinct text parsed once."""
    got = metas.get(meta)
    if got is None:
        from vadclip.io.features import meta_of

        m = meta_of(meta)
        got = metas[meta] = {"camera": m.get("camera"), "start_time": m.get("start_time")}
    return got


def _count_cameras(t: pa.Table, cameras: Dict[str, Dict[str, int]], metas: Dict[Any, Dict[str, Any]]) -> None:
    """Add a round's videos, flagged videos and events (of flagged videos) per camera: grouped
    by ``meta`` in Arrow, then each distinct ``meta`` read once."""
    flagged = pc.fill_null(t["flagged"], False)
    nev = pc.if_else(flagged, pc.fill_null(pc.list_value_length(t["events"]), 0), 0)
    g = pa.table({"meta": t["meta"], "flagged": pc.cast(flagged, pa.int64()), "nev": pc.cast(nev, pa.int64())})
    for r in g.group_by("meta").aggregate([([], "count_all"), ("flagged", "sum"), ("nev", "sum")]).to_pylist():
        cam = _camera_and_start(r["meta"], metas)["camera"]
        if cam is None:
            continue
        c = cameras.setdefault(cam, {"videos": 0, "flagged": 0, "events": 0})
        c["videos"] += int(r["count_all"])
        c["flagged"] += int(r["flagged_sum"] or 0)
        c["events"] += int(r["nev_sum"] or 0)


def _strongest_events(t: pa.Table, events: List, metas: Dict[Any, Dict[str, Any]]) -> None:
    """Keep the :data:`MAX_EVENTS_SHOWN` strongest events of flagged videos seen so far
    (``events``, a heap), ranking the round's events in Arrow first."""
    from datetime import datetime, timedelta

    fl = t.filter(pc.fill_null(t["flagged"], False))
    if not fl.num_rows:
        return
    lists = fl["events"].combine_chunks()
    flat = pc.list_flatten(lists)
    if not len(flat):
        return
    parent = pc.list_parent_indices(lists).to_numpy()
    starts = lists.offsets.to_numpy()[:-1] - lists.offsets[0].as_py()
    within = np.arange(len(flat)) - starts[parent]           # an event's place in its video's list
    score = pc.fill_null(pc.struct_field(flat, "score"), float("-inf"))
    ranked = pa.table({"score": score, "n": fl["_n"].combine_chunks().take(pa.array(parent)),
                       "k": pa.array(within, pa.int64())})
    idx = pc.select_k_unstable(ranked, MAX_EVENTS_SHOWN, [("score", "descending"), ("n", "descending"),
                                                          ("k", "descending")]).to_numpy()
    rows = fl.select(["video_id", "meta"]).take(pa.array(parent[idx])).to_pylist()
    n_of = ranked["n"].to_numpy()
    for e, r, j in zip(flat.take(pa.array(idx)).to_pylist(), rows, idx):
        cs = _camera_and_start(r["meta"], metas)
        t0 = datetime.fromisoformat(cs["start_time"]) if cs["start_time"] else None
        wall = (t0 + timedelta(seconds=e["start_s"])).strftime("%Y-%m-%d %H:%M:%S UTC") if t0 else None
        key = (float(e["score"]) if e["score"] is not None else float("-inf"), int(n_of[j]), int(within[j]))
        ev = (key, dict(e, video_id=r["video_id"], camera=cs["camera"], wall=wall))
        if len(events) < MAX_EVENTS_SHOWN:
            heapq.heappush(events, ev)
        elif key > events[0][0]:
            heapq.heapreplace(events, ev)


def _full_rows(top: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The whole score rows (every snippet's scores) of the videos shown, read from the
    parts :func:`_scan` found them in, no other."""
    from vadclip.io.parts import read_file

    by_file: Dict[str, List[str]] = {}
    for r in top:
        by_file.setdefault(r["_file"], []).append(r["video_id"])
    out: Dict[str, Dict[str, Any]] = {}
    for f, ids in by_file.items():
        for r in read_file(f, filters=[("video_id", "in", ids)]).to_pylist():
            out.setdefault(r["video_id"], r)
    return out


def plot_timeline(row: Dict[str, Any], path: str, threshold: float, snippet_len: int,
                  gt: Optional[List] = None, on_figure=None) -> None:
    """C-branch score and the top class probabilities over time, threshold, events and
    ground truth, as a PNG at ``path`` (local)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.asarray(row["anomaly"], np.float32)
    classes = list(row.get("classes") or [])
    fps = float(row["fps"]) or 30.0
    t = np.arange(len(a)) * snippet_len / fps
    fig, ax = plt.subplots(figsize=(10, 2.6))
    for s, e, _ in gt or []:
        ax.axvspan(s / fps, e / fps, color="tab:green", alpha=0.18, lw=0, label="ground truth")
    for ev in row["events"] or []:
        ax.axvspan(ev["start_s"], ev["end_s"], color="tab:orange", alpha=0.3, lw=0)
        ax.text(ev["start_s"], 1.02, ev["class_name"], fontsize=7, transform=ax.get_xaxis_transform())
    probs = np.asarray(row.get("class_probs") or [], np.float32)
    if len(classes) > 1 and probs.size == len(a) * len(classes):
        probs = probs.reshape(len(a), len(classes))
        for c in (1 + np.argsort(-probs[:, 1:].max(0))[:3]):
            ax.plot(t, probs[:, c], lw=0.8, alpha=0.8, label=f"p({classes[c]})")
    ax.plot(t, a, lw=1.4, color="tab:red", label="anomaly score")
    ax.axhline(threshold, ls="--", color="grey", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(t[-1] if len(t) else 1.0, 1e-3))
    ax.set_xlabel("seconds")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    if on_figure is not None:           # e.g. mlflow.log_figure
        on_figure(fig, "timelines/" + os.path.basename(path))
    plt.close(fig)


def plot_operating_curve(curve: List[Dict[str, float]], point: Optional[Dict[str, float]] = None,
                         path: Optional[str] = None, title: str = ""):
    """False alarms per hour of normal footage (x) against event recall (y) over the
    thresholds of ``curve`` (:func:`vadclip.metrics.operating.curve`), the operating point
    marked (without ground truth: false alarms per hour against the threshold); saved to ``path`` (local) when given.  Returns the figure (the caller
    closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    with_recall = any(np.isfinite(c["event_recall"]) for c in curve)
    # without ground truth there is no recall: false alarms per hour against the threshold
    xkey, ykey = ("false_alarms_per_hour", "event_recall") if with_recall else ("threshold", "false_alarms_per_hour")
    pts = sorted((c[xkey], c[ykey]) for c in curve if np.isfinite(c[xkey]) and np.isfinite(c[ykey]))
    if pts:
        x, y = zip(*pts)
        ax.step(x, y, where="post", color="tab:blue", lw=1.4, label="over thresholds")
    if point is not None and np.isfinite(point.get(xkey, np.nan)) and np.isfinite(point.get(ykey, np.nan)):
        ax.plot([point[xkey]], [point[ykey]], "o", color="tab:red",
                label=f"operating point (threshold {point['threshold']:.3g})")
    if with_recall:
        ax.set_xlabel("false alarms per hour of normal footage")
        ax.set_ylabel("event recall")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
    else:
        ax.set_xlabel("threshold")
        ax.set_ylabel("false alarms per hour")
        ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right", frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=80)
    return fig


def plot_seed_curves(histories: Dict[Any, Dict[str, List]], metrics: List[str], best: Any = None,
                     path: Optional[str] = None):
    """One panel per metric, one line per seed (``histories`` = {seed: {metric: [(step,
    value)]}}), the best seed drawn thicker; saved to ``path`` when given.  Returns the
    figure (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for seed, h in sorted(histories.items(), key=lambda kv: str(kv[0])):
            pts = h.get(m) or []
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, lw=2.2 if seed == best else 1.0, alpha=1.0 if seed == best else 0.7,
                        label=f"seed {seed}" + (" (best)" if seed == best else ""))
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("step (epoch, or evaluation point)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=80)
    return fig


def key_frame_jpegs(row: Dict[str, Any], snippet_len: int) -> List[Tuple[Dict[str, Any], bytes]]:
    """JPEG thumbnails (what, bytes) at the start, peak and end of the first events of a
    video (``row``: its path, fps, anomaly and events), decoded where this runs — a worker
    node, as the score job asks (the video is read there, never on the head); an empty
    list (with a warning) when the video cannot be read any more."""
    import io

    from PIL import Image

    from vadclip.video.decode import VideoError, frames_at

    events = (row["events"] or [])[:KEYFRAME_EVENTS]
    if not events:
        return []
    a = np.asarray(row["anomaly"], np.float32)
    wanted = []
    for k, ev in enumerate(events):
        s, e = int(ev["start_frame"]), max(int(ev["start_frame"]), int(ev["end_frame"]) - 1)
        seg = a[s // snippet_len: max(s // snippet_len + 1, -(-int(ev["end_frame"]) // snippet_len))]
        peak = (s // snippet_len + int(np.argmax(seg))) * snippet_len + snippet_len // 2 if len(seg) else s
        for what, f in (("start", s), ("peak", min(max(peak, s), e)), ("end", e)):
            wanted.append((k, what, f))
    fps = float(row["fps"]) or 30.0
    times = row.get("snippet_times")      # a variable-frame-rate video's: where each snippet starts
    try:
        # by seeking, in place: a day-long recording's key frames cost a GOP each, no download
        # (half a frame in: the frame shown then, whatever the timestamps' rounding)
        frames, _ = frames_at(row["path"], [_frame_time(f, fps, snippet_len, times) + 0.5 / fps
                                            for _, _, f in wanted], row["path"])
    except (VideoError, OSError, RuntimeError, ValueError) as exc:   # the report goes on without them
        log.warning("report: no key frames for %s (%s)", row["video_id"], str(exc).splitlines()[0][:200])
        return []
    out = []
    for (k, what, f), fr in zip(wanted, frames):
        img = Image.fromarray(fr)
        w = max(1, round(img.width * THUMB_HEIGHT / img.height))
        buf = io.BytesIO()
        img.resize((w, THUMB_HEIGHT)).save(buf, format="JPEG", quality=85)
        out.append(({"event": k, "what": what, "frame": int(f), "time": timestamp(f / fps)}, buf.getvalue()))
    return out


def _frame_time(frame: int, fps: float, snippet_len: int, times=None) -> float:
    """When frame ``frame`` is shown: from its snippet's start time where the video's frame
    rate varies (``times``), else from the rate."""
    if times:
        k = min(frame // snippet_len, len(times) - 1)
        step = (times[min(k + 1, len(times) - 1)] - times[k]) / snippet_len if k + 1 < len(times) else 1.0 / fps
        return float(times[k] + (frame - k * snippet_len) * step)
    return frame / fps


def key_frame_input(row: Dict[str, Any]) -> Dict[str, Any]:
    """What :func:`key_frame_jpegs` needs of a scores row (small: no class probabilities)."""
    return {k: row.get(k) for k in ("video_id", "path", "fps", "anomaly", "events", "snippet_times")}


def key_frames(row: Dict[str, Any], img_dir: str, stem: str, snippet_len: int,
               jpegs: Optional[List[Tuple[Dict[str, Any], bytes]]] = None) -> List[Dict[str, Any]]:
    """The key frames of a video as files in ``img_dir`` (``jpegs``: made elsewhere, else here)."""
    out = []
    for info, data in (key_frame_jpegs(row, snippet_len) if jpegs is None else jpegs):
        name = f"{stem}_e{info['event']}_{info['what']}.jpg"
        with open(os.path.join(img_dir, name), "wb") as fh:
            fh.write(data)
        out.append(dict(info, src=f"img/{name}"))
    return out


def _model_line(s: Dict[str, Any]) -> str:
    parts = [s.get("model_uri", "?")]
    if s.get("model_name"):
        parts.append(f"name {s['model_name']}")
    if s.get("model_version"):
        parts.append(f"version {s['model_version']}")
    if s.get("model_alias"):
        parts.append(f"alias @{s['model_alias']}")
    return " · ".join(str(p) for p in parts)


def _num(v, fmt: str = ".3g") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and np.isfinite(v) else "–"


def render_html(summary: Dict[str, Any], counts: Dict[str, int], events: List[Dict[str, Any]],
                videos: List[Dict[str, Any]], at: Optional[Dict[str, float]] = None,
                curve_img: Optional[str] = None, rule=None,
                cameras: Optional[Dict[str, Dict[str, int]]] = None) -> str:
    at = at or {}
    op = summary.get("operating_point") or {}
    rows = [
        ("videos scored", f"{counts['videos']:,}"), ("flagged", f"{counts['flagged']:,}"),
        ("failed", f"{summary.get('videos_failed_total', summary.get('videos_failed', 0)):,}"),
        ("events", f"{counts['events']:,}"),
        ("throughput", f"{summary.get('snippets_per_s', '?')} snippets/s in the last run "
                       f"({summary.get('elapsed_s', '?')} s)"),
        ("model", _model_line(summary)),
        *([("scored by", "; ".join(f"{v or 'a version before rows recorded it'}: {n:,} videos"
                                   for v, n in counts["scored_by"].items()))]
          if len(counts.get("scored_by") or {}) > 1 else []),
        ("event rule", rule.describe() if rule is not None else f"snippet score > {summary.get('threshold', '?')}"),
        ("operating point", op.get("source", "not recorded (scored by an earlier version)")
         + (f"; chosen by {', '.join(f'{k}={v}' for k, v in op['chosen_by'].items() if v is not None)}"
            if op.get("chosen_by") else "")
         + (f"; flags over it: {', '.join(op['flags_over_it'])}" if op.get("flags_over_it") else "")),
    ]
    if op.get("threshold_by_value"):     # calibrated --by a column: each value's own threshold
        rows.append((f"threshold by {op.get('by')}", "; ".join(
            f"{k}: {_num(v)}" for k, v in sorted(op["threshold_by_value"].items())) + "; any other: the rule above"))
    if at:
        rows.append(("alerts", f"{_num(at.get('alerts_per_hour'))} events per hour over "
                               f"{_num(at.get('hours_scanned'))} h of footage"))
    if "false_alarms_per_hour" in at:
        rows.append(("at this operating point",
                     f"{_num(at['false_alarms_per_hour'])} false alarms per hour of normal footage "
                     f"({at['false_alarms']} in {_num(at['normal_hours'])} h); event recall "
                     f"{_num(at['event_recall'])}, event precision {_num(at['event_precision'])} (an event and a "
                     f"ground-truth interval match when they overlap)"))
    if (op.get("on_validation") or {}).get("false_alarms_per_hour") is not None:
        v = op["on_validation"]
        rows.append(("on its validation footage", f"{_num(v.get('false_alarms_per_hour'))} false alarms per hour, "
                                                  f"event recall {_num(v.get('event_recall'))}, event precision "
                                                  f"{_num(v.get('event_precision'))}"))
    if summary.get("feature_mismatch"):
        rows.append(("FEATURES DO NOT FIT THE MODEL", f"scored anyway (--allow-feature-mismatch): "
                                                      f"{summary['feature_mismatch']}"))
    for k, label in (("auc", "frame AUC"), ("ap", "frame AP"), ("map_avg", "mAP (mean over IoU 0.1–0.5)")):
        if isinstance(summary.get(k), (int, float)):
            rows.append((label, f"{summary[k]:.4f}"))
    shown = f"the {len(events)} strongest of {counts['events']:,}" if len(events) < counts["events"] else \
        f"all {len(events)}"
    n_flag = sum(bool(v["flagged"]) for v in videos)
    heading = f"Flagged videos (top {n_flag} of {counts['flagged']:,} by score)"
    if len(videos) > n_flag:
        heading += f" and the {len(videos) - n_flag} highest-scoring unflagged"
    failed = summary.get("failed_videos") or []
    return _template().render(
        output=str(summary.get("output", "")), summary_rows=rows, curve_img=curve_img,
        # where the flags are, most flagged first (the manifest named cameras)
        cameras=sorted((cameras or {}).items(), key=lambda kv: (-kv[1]["flagged"], -kv[1]["events"], kv[0])),
        events=events, events_shown=shown, where=any(ev.get("camera") is not None or ev.get("wall") for ev in events),
        anchors={v["video_id"]: _safe(v["video_id"]) for v in videos}, videos_heading=heading,
        videos=[dict(v, duration_s=(int(v["num_frames"]) / (float(v["fps"]) or 30.0)) if v["num_frames"] else 0.0)
                for v in videos],
        failed=failed, failed_total=summary.get("videos_failed_total", len(failed)), thumb_height=THUMB_HEIGHT)


def _template():
    """The page's template (``templates/report.html.j2``, its style and script beside it),
    every value HTML-escaped."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("vadclip.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    env.filters["timestamp"] = timestamp
    env.filters["redact"] = storage.redact        # a URI with a key in it shows without the key
    return env.get_template("report.html.j2")


def build_report(out_dir: str, summary: Optional[Dict[str, Any]] = None, gt_path: Optional[str] = None,
                 top_n: int = 50, snippet_len: Optional[int] = None, local_dir: Optional[str] = None,
                 on_figure=None, operating=None, key_frames_of=None) -> Dict[str, Any]:
    """Write ``out_dir``/report (local or object storage) from ``out_dir``/scores.
    ``summary`` defaults to ``out_dir``/score_summary.json.  With ``local_dir`` the
    report is also left there (for MLflow); ``on_figure(fig, name)`` sees each
    figure.  ``operating``: (the operating point's statistics, the curve) against
    ``gt_path`` when already computed (the scoring job computes them in a task on a
    worker); else they are computed here.  Returns what was written."""
    from vadclip.io.gt import intervals_of, read_gt

    out_dir = storage.absolute(out_dir)
    scores = layout.scores_dir(out_dir)
    if summary is None:
        sp = storage.join(out_dir, layout.SCORE_SUMMARY)
        summary = json.loads(storage.read_text(sp)) if storage.isfile(sp) else {}
    snippet_len = int(snippet_len or summary.get("snippet_len") or 16)
    rule = summary_rule(summary)
    threshold = rule.threshold
    gt = read_gt(gt_path) if gt_path else {}
    counts: Dict[str, Any] = {}
    top, events, cameras = _scan(scores, top_n, counts)     # and the folder's counts, in the same pass
    full = _full_rows(top)
    tmp = None
    if local_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="vadclip-report-")
        local_dir = tmp.name
    img_dir = os.path.join(local_dir, "img")
    os.makedirs(img_dir, exist_ok=True)
    # how the operating point does here: alerts per hour always; with ground truth, false
    # alarms per hour of normal footage, event recall and precision, and the curve
    at = {"hours_scanned": counts["hours"],
          "alerts_per_hour": counts["events"] / counts["hours"] if counts["hours"] > 0 else float("nan")}
    curve_img = None
    if gt_path:
        from vadclip.metrics.operating import curve, operating_stats

        if operating is None:
            footage = operating_footage(scores, gt, snippet_len, summary.get("label_rule"))
            operating = (operating_stats(footage, rule), curve(footage, rule))
            del footage
        stats, scanned = operating
        at.update({k: stats[k] for k in ("false_alarms_per_hour", "false_alarms", "normal_hours", "event_recall",
                                         "event_precision", "event_f1", "frame_precision", "frame_recall")})
        fig = plot_operating_curve(scanned, stats, os.path.join(img_dir, "operating_curve.png"),
                                   title="false alarms per hour against event recall, over thresholds")
        if on_figure is not None:
            on_figure(fig, "operating_curve.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        curve_img = "img/operating_curve.png"
    # key frames: ``key_frames_of`` (the score job's: a Ray task per video on the workers)
    # or here, one video at a time
    rows = [full.get(r["video_id"], r) for r in top]
    jpegs = key_frames_of([key_frame_input(row) for row in rows], snippet_len) if key_frames_of else [None] * len(rows)
    videos = []
    for r, row, jp in zip(top, rows, jpegs):
        stem = _safe(r["video_id"])
        plot_timeline(row, os.path.join(img_dir, f"{stem}_timeline.png"), threshold, snippet_len,
                      intervals_of(gt, r["video_id"]) or None, on_figure)
        videos.append(dict(row, camera=r.get("camera"), start_time=r.get("start_time"), timeline=f"img/{stem}_timeline.png",
                           frames=key_frames(row, img_dir, stem, snippet_len, jp)))
    page = render_html(summary, counts, events, videos, at, curve_img, rule, cameras)
    with open(os.path.join(local_dir, "index.html"), "w", encoding="utf-8") as fh:
        fh.write(page)
    dest = layout.report_dir(out_dir)
    if not (storage.is_local(dest) and storage.resolve(dest)[1] == os.path.abspath(local_dir)):
        storage.upload_dir(local_dir, dest)
    if tmp is not None:
        tmp.cleanup()
    return {"report": storage.join(dest, "index.html"), "videos_shown": len(videos),
            "events_shown": len(events), **{f"{k}_total": v for k, v in counts.items()},
            "at_operating_point": at}


def rebuild_report(out_dir: str, gt_path: Optional[str] = None, top_n: int = 50) -> Dict[str, Any]:
    """(Re)build the report of a scoring output (``vadclip report``); one line if
    ``out_dir`` holds no scores."""
    from vadclip.errors import InputError
    from vadclip.io.parts import part_files
    from vadclip.io.storage import absolute

    out = absolute(out_dir)
    if not part_files(layout.scores_dir(out)):
        raise InputError(f"{out}: no scores here (expected {layout.scores_dir(out)}/part-*.parquet from "
                         "`vadclip score --out`)")
    return build_report(out, gt_path=gt_path, top_n=top_n)
