"""Archive scoring as a Ray Data job: feature rows (or raw videos, extracted first)
→ model actor pool → per-video Parquet rows with per-snippet anomaly scores,
per-class probabilities and thresholded, merged event segments.  Resumable; failures
go to an errors table; the run ends with the review report (:mod:`vadclip.report.html`:
summary, events, timelines and key frames of the top flagged videos) beside the
scores, and the summary metrics (AUC/AP/mAP given ground truth), the summary and the
report are logged to MLflow."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vadclip.io import storage
from vadclip.errors import InputError
from vadclip.options import MISMATCH_HELP, option
from vadclip.io import layout
from vadclip.io.features import ERROR_SCHEMA, meta_of, meta_text
from vadclip.io.provenance import check_fit
from vadclip.jobs.output import ResumableOutput, row_sink
from vadclip.jobs.runner import Job, Pipeline, Sink, run
from vadclip.jobs.stages import Resources, Stage
from vadclip.metrics.operating import DEFAULT_RULE, EventRule, OperatingPoint, snippet_times_for
from vadclip.io.parts import committed_values as _committed_values
from vadclip.io.parts import committed_column, dataset_files
from vadclip.report.html import build_report, output_totals

EVENT_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("start_frame", pa.int64()),
                        ("end_frame", pa.int64()), ("class_name", pa.string()), ("score", pa.float64())])
SCORE_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("label", pa.string()), ("fps", pa.float64()),
    ("num_frames", pa.int64()), ("snippet_count", pa.int64()), ("classes", pa.list_(pa.string())),
    ("anomaly", pa.list_(pa.float32())), ("class_probs", pa.list_(pa.float32())),
    ("video_score", pa.float64()), ("predicted_class", pa.string()), ("flagged", pa.bool_()),
    ("events", pa.list_(EVENT_TYPE)),
    ("meta", pa.string()),     # the video's manifest columns (camera, start_time, …), as its feature rows hold them
    ("snippet_times", pa.list_(pa.float64())),    # as the feature rows hold them (variable frame rate only)
    # what scored it: the model version (``models:/NAME/N``, or the model file) and the event rule
    # (JSON, sorted keys) its events come from; a folder scored night after night holds rows of
    # every version promoted meanwhile, each saying which (empty in parts written before them)
    ("model_version", pa.string()), ("rule", pa.string()),
])
# what the scoring stage hands the writers: the scores table's columns, and the error of a
# video whose features cannot be used (its other columns null)
STAGE_SCHEMA = SCORE_SCHEMA.append(pa.field("error", pa.string()))


# one row per event, flattened from the score rows that hold them (``scores.events``, committed
# with their row in one step): what :func:`read_events` gives
EVENTS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("event", pa.int32()),
    ("start_s", pa.float64()), ("end_s", pa.float64()), ("start_frame", pa.int64()), ("end_frame", pa.int64()),
    ("class_name", pa.string()), ("score", pa.float64()), ("video_score", pa.float64()),
    ("model", pa.string()), ("rule", pa.string()),
    # where and when: the manifest's camera column, and with its start_time (the recording's
    # start) the event's wall-clock start and end (UTC); the video's other columns as JSON text
    ("camera", pa.string()), ("start_time", pa.timestamp("us", tz="UTC")), ("end_time", pa.timestamp("us", tz="UTC")),
    ("meta", pa.string()),
])


def events_table(rows: List[Dict[str, Any]]) -> pa.Table:
    """Score rows' events, a row each (:data:`EVENTS_SCHEMA`), each naming the model
    version and rule that scored its video and, from the video's manifest columns, its
    camera and wall-clock start and end."""
    return pa.Table.from_pylist([event_row(r, i, ev, r.get("model_version") or "", r.get("rule") or "")
                                 for r in rows for i, ev in enumerate(r.get("events") or [])], EVENTS_SCHEMA)


def read_events(out_dir: str) -> pa.Table:
    """Every event of the scores committed in ``out_dir``, a row each (:func:`events_table`).

    A video's events live in its score row (``OUT/scores``, column ``events``) and are
    committed with it in one step, so no reader sees a score without its events or events
    without their score. Plain readers flatten the same column, e.g. DuckDB's
    ``SELECT video_id, path, unnest(events, recursive := true) FROM delta_scan('OUT/scores')``."""
    from vadclip.io.parts import part_files, read_file, read_schema

    parts = []
    for f in part_files(_scores_dir(out_dir)):
        names = read_schema(f).names
        t = read_file(f, [c for c in ("video_id", "path", "video_score", "events", "meta", "model_version", "rule")
                          if c in names])
        t = t.filter(pc.greater(pc.list_value_length(t.column("events")), 0))
        if t.num_rows:
            parts.append(events_table(t.to_pylist()))
    return pa.concat_tables(parts) if parts else EVENTS_SCHEMA.empty_table()


def event_row(r: Dict[str, Any], i: int, ev: Dict[str, Any], model: str, rule_json: str) -> Dict[str, Any]:
    """Event ``i`` (``ev``) of the scores row ``r`` as a row of :data:`EVENTS_SCHEMA`."""
    out = {"video_id": r["video_id"], "path": r["path"], "event": i, **ev, "video_score": r["video_score"],
           "model": model, "rule": rule_json, "meta": r.get("meta") or ""}
    _event_where(out)
    return out


def _event_where(row: Dict[str, Any]) -> None:
    """An event row's camera and wall-clock start and end (UTC), from its ``meta`` (the
    manifest's camera and the recording's start_time) and its seconds."""
    from datetime import datetime, timedelta

    meta = meta_of(row.get("meta"))
    row["camera"], row["start_time"], row["end_time"] = meta.get("camera"), None, None
    if meta.get("start_time"):
        t0 = datetime.fromisoformat(meta["start_time"])
        row["start_time"] = t0 + timedelta(seconds=row["start_s"])
        row["end_time"] = t0 + timedelta(seconds=row["end_s"])


RULE_GROUP = "event rule (flags not given come from the model's operating point, see `vadclip calibrate`; " \
             "without one: threshold 0.5, no hysteresis, no minimum duration, 1 s merge gap)"


@dataclass
class ScoreOptions:
    """How a model's scores become events and outputs (the command line's flags are these fields).
    The event rule's fields left None take the model's operating point (see
    :meth:`resolve`)."""
    threshold: Optional[float] = option(None, group=RULE_GROUP, help="snippet anomaly threshold: an event opens "
                                                                      "above it")
    hysteresis: Optional[float] = option(None, group=RULE_GROUP, help="an open event closes only when the score "
                                                                       "falls this far below the threshold")
    min_duration_s: Optional[float] = option(None, group=RULE_GROUP, help="shortest event kept, in seconds")
    merge_gap_s: Optional[float] = option(None, group=RULE_GROUP, help="events this many seconds apart (or "
                                                                        "closer) merge into one")
    operating_point: Optional[str] = option(None, group=RULE_GROUP,
                                            help="operating point file written by `vadclip calibrate` (instead of "
                                                 "the model's own)")
    num_scorers: int = option(1, help="size of the scoring actor pool")
    crop: Optional[int] = option(None, help="crop to score (default: the lowest crop present)")
    rows_per_file: int = option(256, cli=False, help="scored videos per Parquet part file (at most)")
    flush_seconds: float = option(60.0, cli=False, help="scored rows are written at least this often")
    max_plots: int = option(50, help="videos given a page in the report: flagged ones first (with key frames), "
                                     "then by score")
    allow_feature_mismatch: bool = option(False, help=MISMATCH_HELP)
    rule_by: Optional[str] = option(None, cli=False, help="the manifest column whose value picks a video's rule "
                                                          "(from an operating point calibrated --by it)")
    group_rules: Optional[Dict[str, Dict[str, Any]]] = option(
        None, cli=False, help="{value of rule_by: its EventRule's fields}; other values: the rule of the fields above")
    model_version: str = option("", cli=False, help="the model version scoring (models:/NAME/N or a file), "
                                                    "recorded on every score and event row")
    rescore: str = option("none", choices=["none", "changed", "all"],
                          help="videos already scored in --out: none (default: new and rewritten recordings only; "
                               "what was scored keeps the version and rule that scored it), changed (also every "
                               "video scored by another model version or event rule than this run's: the backlog "
                               "after a promotion or a recalibration) or all")

    RULE_FIELDS = ("threshold", "hysteresis", "min_duration_s", "merge_gap_s")

    def rule(self) -> EventRule:
        """The event rule of these options (fields left None: the default rule's)."""
        d = DEFAULT_RULE
        t = d.threshold if self.threshold is None else float(self.threshold)
        h = d.hysteresis if self.hysteresis is None else float(self.hysteresis)
        return EventRule(t, low=t - h if h > 0 else None,
                         min_duration_s=d.min_duration_s if self.min_duration_s is None else float(self.min_duration_s),
                         merge_gap_s=d.merge_gap_s if self.merge_gap_s is None else float(self.merge_gap_s))

    def rule_for(self, meta: Any = None) -> EventRule:
        """The rule of a video whose manifest columns are ``meta`` (its rows' JSON text, or
        a dict between stages): its group's where the operating point has one for its value of
        ``rule_by`` (its camera's), else :meth:`rule`."""
        if self.rule_by and self.group_rules:
            v = meta_of(meta).get(self.rule_by)
            g = self.group_rules.get(str(v)) if v is not None else None
            if g is not None:
                return EventRule(**g)
        return self.rule()

    def stale(self, table: pa.Table) -> List[str]:
        """The video ids of score rows (``video_id``, ``model_version``, ``rule``, ``meta``)
        that ``--rescore`` scores again."""
        if self.rescore == "all":
            return table.column("video_id").to_pylist()
        if self.rescore != "changed":
            return []
        return [r["video_id"] for r in table.to_pylist()
                if r.get("model_version") != self.model_version or r.get("rule") != self.rule_json(r.get("meta"))]

    def rule_json(self, meta: Any = None) -> str:
        """:meth:`rule_for` as a score row and its events record it (JSON, sorted keys)."""
        return json.dumps(asdict(self.rule_for(meta)), sort_keys=True)

    def rules_record(self) -> Dict[str, Any]:
        """The rule (and each group's) as the scores folder and the events table keep it."""
        d = asdict(self.rule())
        if self.rule_by and self.group_rules:
            d.update(by=self.rule_by, groups={k: dict(v) for k, v in sorted(self.group_rules.items())})
        return d

    def resolve(self, op: Optional[OperatingPoint], source: str = "none") -> Tuple["ScoreOptions", Dict[str, Any]]:
        """These options with every event-rule field set: the flags given, else the
        operating point ``op``'s, else the default rule's; and the record of it (for the
        summary, MLflow and the report).  An operating point calibrated ``--by`` a column
        gives each of its values its own rule (a flag given overrides that field in every
        one of them)."""
        base = op.rule if op is not None else DEFAULT_RULE
        given = [k for k in self.RULE_FIELDS if getattr(self, k) is not None]
        for k in ("hysteresis", "min_duration_s", "merge_gap_s"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise InputError(f"--{k.replace('_', '-')} {v} is negative")

        def fields(r: EventRule) -> Dict[str, float]:
            vals = {"threshold": r.threshold, "hysteresis": r.hysteresis, "min_duration_s": r.min_duration_s,
                    "merge_gap_s": r.merge_gap_s}
            vals.update({k: float(getattr(self, k)) for k in given})
            return vals

        out = replace(self, **fields(base))
        groups = op.group_rules() if op is not None else {}
        if groups:
            out = replace(out, rule_by=op.by, group_rules={
                g: asdict(replace(self, **fields(r)).rule()) for g, r in groups.items()})
        record = {"source": source if op is not None else "none (the default rule)", "rule": out.rule().describe(),
                  "flags_over_it": given,
                  **({"chosen_by": op.chosen_by, "on_validation": op.to_dict()["on_validation"],
                      "calibrated_on": op.features, "created": op.created} if op is not None else {})}
        if groups:
            record.update(by=op.by, rule_by_value={g: EventRule(**r).describe() for g, r in out.group_rules.items()},
                          threshold_by_value={g: r["threshold"] for g, r in out.group_rules.items()})
        return out, record


def find_events(anomaly: np.ndarray, probs: np.ndarray, classes: Sequence[str], fps: float, num_frames: int,
                rule: EventRule, snippet_len: int = 16, times: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    """The events of one video under ``rule`` (threshold, hysteresis, merge gap and
    minimum duration in seconds: :meth:`EventRule.events`); each event gets the abnormal
    class with the highest mean probability over it.  Seconds come from ``times`` (where
    each snippet starts and the last ends, from a variable-frame-rate video's
    timestamps) when given, else from the frame rate."""
    times = snippet_times_for(times, len(anomaly))
    events = []
    for s, e in rule.events(anomaly, snippet_len / fps, times):
        c = 1 + int(np.argmax(probs[s:e, 1:].mean(0))) if probs.shape[1] > 1 else 0
        sf, ef = s * snippet_len, min(e * snippet_len, num_frames)
        t0, t1 = (float(times[s]), float(times[e])) if times is not None else (sf / fps, ef / fps)
        events.append({"start_s": t0, "end_s": t1, "start_frame": sf, "end_frame": ef,
                       "class_name": classes[c], "score": float(anomaly[s:e].mean())})
    return events


class ScoreStage(Stage):
    """Scoring, the one class however a video's features come: an actor pool
    (``--num-scorers``) over feature rows read back from Parquet (``score --features``,
    :meth:`__call__`: one output row per input row), or set up inside the extraction
    writers that assemble each video (``score --videos``, :class:`Scorer` calls
    :meth:`score`).  A row whose features cannot be used (wrong dimension, NaN, empty)
    gets its error recorded, never dropped; anything else is the environment's and Ray
    retries.

    ``checkpoint`` is a checkpoint dict (or a Ray object reference to one, so that a
    pool of actors shares one copy of the weights)."""

    def __init__(self, checkpoint, opts: ScoreOptions) -> None:
        self.checkpoint, self.opts = checkpoint, opts

    def resources(self) -> Resources:
        return Resources(cpus=1, actors=self.opts.num_scorers, batch_size=8)    # the model is small

    def setup(self) -> None:
        self.model = model_of(self.checkpoint)
        self.classes = list(self.model.cfg.class_keys)

    def score(self, meta: Dict[str, Any], feats: Optional[np.ndarray], snippets: int,
              curves: Optional["Curves"] = None) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """(the video's score row, None), or (None, the error line) when its features
        cannot be used (:func:`score_one`)."""
        return score_one(self.model, self.classes, self.opts, meta, feats, snippets, curves)

    def __call__(self, batch: Dict[str, np.ndarray]) -> pa.Table:
        """The batch's score rows as an Arrow table of :data:`STAGE_SCHEMA` (the scores
        table's columns, events as structs; ``error`` set on a row whose features cannot
        be used, its other columns then null)."""
        from vadclip.io.features import row_features

        out = []
        for i in range(len(batch["video_id"])):
            row = {k: batch[k][i] for k in batch}
            try:
                feats = row_features(row)
            except InputError as e:  # a problem of this row's features: recorded, never dropped
                good, bad = None, score_error(row, e)
            else:
                good, bad = self.score(row, feats, int(row["snippet_count"]))
            out.append(dict(good, error=None) if good is not None else
                       {"video_id": row["video_id"], "path": row["path"], "error": bad})
        return pa.Table.from_pylist(out, schema=STAGE_SCHEMA)


def model_of(checkpoint):
    """The scoring model of a checkpoint dict, or of a Ray reference to one (what the
    driver put once for every scorer and writer)."""
    from vadclip.model.checkpoint import load_checkpoint

    if not isinstance(checkpoint, dict):
        import ray

        checkpoint = ray.get(checkpoint)
    return load_checkpoint(checkpoint)


def score_one(model, classes: List[str], opts: ScoreOptions, meta: Dict[str, Any], feats: Optional[np.ndarray],
              snippets: int, curves: Optional["Curves"] = None) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The one way a video is scored, wherever its features come from (the extraction
    writer that assembled it, or a feature set read back): (its score row, None), or
    (None, the error line) when its features cannot be used.  ``meta``: the video's
    feature-row columns (video_id, path, label, fps, num_frames, meta, snippet_times);
    ``feats`` [T, D] of the crop scored (a long recording: its last segment or None,
    the rest in ``curves``)."""
    try:
        s = score_features(model, feats, meta, opts, classes, curves)
    except InputError as e:
        return None, score_error(meta, e)
    return score_row(meta, s, snippets, classes, opts), None


def score_error(row: Dict[str, Any], e: Exception) -> str:
    return f"{row['path']}: {type(e).__name__}: {e}"


# chunks of visual_length snippets scored in one forward pass: what a scorer's memory peaks
# at, so the same for an hour as for a day (each chunk is scored on its own, the official
# test's way: the batch changes no number).  Measured on CPU (2026-12-07, one thread, 8,192
# snippets): 8 chunks a pass rose 122 MB for 2.63 s, 2 chunks 28 MB for 2.44 s, 1 chunk 12 MB
# for 2.89 s
SCORE_CHUNK_BATCH = 2


class Curves:
    """A video's per-snippet scores computed as its features come, a segment at a time
    (a long recording): each whole ``visual_length`` chunk is scored as it is complete
    (the official test's chunks, each scored on its own), the rest held until more comes
    or :meth:`end` — the same numbers as scoring the video in one piece, holding at most a
    chunk of features whatever the recording's length."""

    def __init__(self, model, source: str) -> None:
        self.model, self.source = model, source
        self.rest: Optional[np.ndarray] = None
        self.anomaly: List[np.ndarray] = []
        self.probs: List[np.ndarray] = []

    def add(self, features: np.ndarray) -> None:
        from vadclip.io.features import check_features
        from vadclip.model.network import score_video

        f = check_features(features, self.source, self.model.embed_dim)
        x = f if self.rest is None else np.concatenate([self.rest, f])
        whole = x.shape[0] // self.model.cfg.visual_length * self.model.cfg.visual_length
        if whole:
            a, p = score_video(self.model, x[:whole], chunk_batch=SCORE_CHUNK_BATCH)
            self.anomaly.append(a)
            self.probs.append(p)
        self.rest = x[whole:]

    def end(self) -> Tuple[np.ndarray, np.ndarray]:
        from vadclip.model.network import score_video

        if self.rest is not None and self.rest.shape[0]:
            a, p = score_video(self.model, self.rest, chunk_batch=SCORE_CHUNK_BATCH)
            self.anomaly.append(a)
            self.probs.append(p)
        if not self.anomaly:
            from vadclip.io.features import FeatureError

            raise FeatureError(f"{self.source}: empty video features (0 snippets)")
        return np.concatenate(self.anomaly), np.concatenate(self.probs)


def score_features(model, features: Optional[np.ndarray], row: Dict[str, Any], opts: ScoreOptions,
                   classes: List[str], curves: Optional[Curves] = None) -> Dict[str, Any]:
    """One video's scores from its features [T, D] (``row``: its fps, frame count, path,
    id) — or, for a long recording, from its :class:`Curves` (``features``: its last
    segment, or None): per-snippet anomaly and class probabilities, the video score
    (top-k mean), its events and whether it is flagged.  Unusable features raise an
    :class:`InputError`."""
    from vadclip.io.features import check_features, times_of
    from vadclip.model.losses import topk_count
    from vadclip.model.network import score_video

    if curves is None:
        anomaly, probs = score_video(model, check_features(features, f"{row['path']} ({row['video_id']})",
                                                           model.embed_dim), chunk_batch=SCORE_CHUNK_BATCH)
    else:
        if features is not None:
            curves.add(features)
        anomaly, probs = curves.end()
    vscore = float(np.sort(anomaly)[::-1][:topk_count(len(anomaly))].mean())
    ev = find_events(anomaly, probs, classes, float(row["fps"]) or 30.0,
                     int(row["num_frames"]) or len(anomaly) * 16, opts.rule_for(row.get("meta")),
                     model.cfg.snippet_len, times_of(row))
    # flagged ⇔ at least one event; the video's class is that of its strongest event
    pcls = max(ev, key=lambda e: e["score"])["class_name"] if ev else classes[0]
    return {"anomaly": anomaly.astype(np.float32), "class_probs": probs.astype(np.float32).reshape(-1),
            "video_score": vscore, "predicted_class": pcls, "flagged": bool(ev), "events": ev}


def label_of(value: Any) -> Optional[str]:
    """A video's label as the scores table keeps it: the text, or None for a video
    without one — whatever the feature set's label column held (absent, all null, which
    Ray Data hands over as float NaN, empty, or mixed)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value != "" else None


def score_row(meta: Dict[str, Any], s: Dict[str, Any], snippet_count: int, classes: List[str],
              opts: "ScoreOptions") -> Dict[str, Any]:
    """One row of the scores table (``SCORE_SCHEMA``): the video (``meta``: video_id,
    path, label, fps, num_frames), its scores (``s``, as :func:`score_features` gives) and
    what scored it (``opts``: the model version and the video's event rule)."""
    return {"video_id": meta["video_id"], "path": meta["path"], "label": label_of(meta.get("label")),
            "fps": float(meta["fps"]), "num_frames": int(meta["num_frames"]), "snippet_count": int(snippet_count),
            "classes": classes, "anomaly": np.asarray(s["anomaly"], np.float32),
            "class_probs": np.asarray(s["class_probs"], np.float32), "video_score": float(s["video_score"]),
            "predicted_class": s["predicted_class"], "flagged": bool(s["flagged"]), "events": s["events"],
            "meta": meta_text(meta.get("meta")), "snippet_times": _times_list(meta),
            "model_version": opts.model_version, "rule": opts.rule_json(meta.get("meta"))}


def _times_list(row: Dict[str, Any]) -> Optional[List[float]]:
    from vadclip.io.features import times_of

    t = times_of(row)
    return None if t is None else t.tolist()


class Scorer:
    """Feeds :class:`ScoreStage` the whole videos the extraction writers of
    ``score --videos`` assemble (a long recording a segment at a time) and writes its
    rows: the stage (the model's checkpoint, or a Ray reference to it, and the options),
    the crop to score, and where the score rows go."""

    def __init__(self, checkpoint, opts: ScoreOptions, crop: int, output, run_id: str) -> None:
        self.stage = ScoreStage(checkpoint, opts)
        self.opts, self.crop, self.output, self.run_id = opts, crop, output, run_id
        self.forgotten: set = set()

    def forget(self, paths: set) -> None:
        """On the driver, under the lease, before the pipeline: the videos at ``paths`` were
        rewritten since they were scored (an NVR rewrites the day's file): their score rows
        (events in them) are replaced by the commit that adds the new file's (never beside them,
        never none in between; dropped at the run's end where the new file fails), their
        score error rows go now."""
        from vadclip.io.parts import drop_rows, read_column

        self.forgotten = {v for v, p in zip(read_column(self.output.rows_dir, "video_id"),
                                            read_column(self.output.rows_dir, "path")) if p in paths}
        self.output.replace_later(self.output.rows_dir, paths)
        drop_rows(self.output.errors_dir, "path", paths, self.output.tokens.get(self.output.errors_dir))

    def correct(self, updates: Dict[str, Dict[str, Any]]) -> None:
        """On the driver, under the lease: the manifest now says other things of these videos
        (``{path: {"label", "meta"}}``): their score rows follow (so do their events'
        camera and wall-clock times, read from the row's meta), without scoring anything again."""
        from vadclip.io.parts import update_rows

        update_rows(self.output.rows_dir, "path", {p: {"label": u["label"] or None, "meta": u["meta"]}
                                                   for p, u in updates.items()},
                    token=self.output.tokens.get(self.output.rows_dir))

    def start(self, skip=()) -> None:
        """In the writer: load the model, open the part writers.  ``skip``: videos whose
        scores are committed already (by an earlier incarnation of this writer, or an
        earlier round of the run)."""
        self.stage.setup()
        self.skip = set(skip)
        self.streams: Dict[str, list] = {}     # long recordings being scored a segment at a time
        self.counts = {"rows": 0, "errors": 0, "snippets": 0, "failures": []}
        self.sw, self.ew = self.output.writers(self.run_id, SCORE_SCHEMA, ERROR_SCHEMA, self.opts.rows_per_file,
                                               self.opts.flush_seconds, on_commit=self._committed)

    def _committed(self, rows: List[Dict[str, Any]]) -> None:
        for r in rows:
            if "error" in r:
                self.counts["errors"] += 1
                self.counts["failures"].append(r["error"])
            else:
                self.counts["rows"] += 1
                self.counts["snippets"] += int(r["snippet_count"])

    def segment(self, vid: str, feats: np.ndarray, path: str) -> None:
        """A long recording's next segment [n, crops, D] (its last comes to :meth:`video`):
        scored as it comes, only the per-snippet scores kept."""
        if self.crop >= feats.shape[1] or vid in self.skip:
            return
        st = self.streams.setdefault(vid, [Curves(self.stage.model, f"{path} ({vid})"), None])
        if st[1] is None:
            try:
                st[0].add(feats[:, self.crop])
            except InputError as e:
                st[1] = e          # an error row when the video ends

    def video(self, vid: str, meta: Dict[str, Any], feats: np.ndarray, snippets: Optional[int] = None) -> None:
        """A video's features [T, crops, D], just assembled (a long recording: its last
        segment, the earlier ones given to :meth:`segment`; ``snippets``: all of them)."""
        curves, err = self.streams.pop(vid, (None, None))
        if self.crop >= feats.shape[1] or vid in self.skip:
            return
        self.skip.add(vid)
        row = dict(meta, video_id=vid)
        if err is not None:
            good, bad = None, score_error(row, err)
        else:
            good, bad = self.stage.score(row, feats[:, self.crop] if feats.shape[0] or curves is None else None,
                                         snippets or feats.shape[0], curves)
        if good is None:
            self.ew.add([{"path": meta["path"], "video_id": vid, "stage": "score", "error": bad}])
        else:
            self.sw.add([good])

    def tick(self) -> None:
        self.sw.tick()
        self.ew.tick()

    def finish(self) -> Dict[str, Any]:
        self.sw.flush()
        self.ew.flush()
        return self.counts


def _scores_dir(out_dir: str) -> str:
    return layout.scores_dir(out_dir)


def _retire_events_table(out_dir: str, log) -> None:
    """Under the lease: ``OUT/events``, the table of events that folders scored before
    2026-12-07 kept beside ``OUT/scores``, goes.  It was committed after the scores it came
    from (a reader could see one without the other) and would no longer follow them; the
    score rows hold every event it held."""
    old = layout.events_dir(out_dir)
    if storage.exists(old):
        storage.delete_dir(old)
        log(f"[score] {old}: removed; each video's events are in its score row ({_scores_dir(out_dir)}, column "
            "events), committed with it (read_events, or unnest(events) in SQL)")


RULE_FILE = "_event_rule.json"     # the rule of the folder's last run (each row records its own)
MODEL_FILE = "_model.json"         # the model version and crop of the folder's last run


def _one_crop(scores_dir: str, record: Dict[str, Any], log) -> None:
    """A scores folder holds one crop of its videos: resuming it with another stops in one
    line, before Ray.  Another model version or event rule does not stop it (a promotion
    between two nightly scans): each row records the version and rule that made it, and
    this says when they change."""
    from vadclip.io.parts import part_files

    path = storage.join(scores_dir, MODEL_FILE)
    if not storage.isfile(path) or not part_files(scores_dir):
        return
    old = json.loads(storage.read_text(path))
    if old["crop"] != record["crop"]:
        raise InputError(f"{scores_dir} holds scores of crop {old['crop']}, not this run's crop {record['crop']}: "
                         f"score into a new --out, or give --crop {old['crop']}")
    if old.get("model") != record["model"] or (old.get("weights") and old["weights"] != record["weights"]):
        log(f"[score] {scores_dir}: its last run scored with {old.get('model')}; this run scores what is new with "
            f"{record['model']} (each row records its model version; rows already there keep theirs)")


def _files_to_score(files: List[str], todo: Optional[List[str]], done: set
                    ) -> Tuple[List[str], Dict[str, List[str]]]:
    """The feature parts holding a video to score (``todo``, or any not in ``done``): a part
    whose videos are all scored is not read at all (its small ``video_id`` column says so),
    so a nightly ``score --features`` reads what is new, not every feature byte.  And the
    long recordings to score, kept in segments: ``{video_id: the parts holding them}``."""
    from vadclip.io.parts import read_file

    want = set(todo) if todo is not None else None
    keep, segmented = [], {}
    for f in files:
        try:
            t = read_file(f, ["video_id", "snippet_start"])
        except pa.ArrowInvalid:     # a part written before segments
            t = read_file(f, ["video_id"])
        ids = t.column("video_id").to_pylist()
        if "snippet_start" in t.column_names:
            for v, start in zip(ids, t.column("snippet_start").to_pylist()):
                if start is not None and (v in want if want is not None else v not in done) and \
                        f not in segmented.setdefault(v, []):
                    segmented[v].append(f)
        ids = set(ids)
        if (want is not None and ids & want) or (want is None and ids - done):
            keep.append(f)
    return keep, segmented


def _rescore_stale(out_dir: str, opts: ScoreOptions, output: ResumableOutput, log) -> set:
    """``--rescore changed|all``, under the lease: the videos to score again with this run's
    version and rule, from their feature rows.  Their score rows (events in them) stay until the
    commit that adds the new ones takes them out (one video at a time: never two rows for
    a video, never none).  Returns their ids."""
    from vadclip.io.parts import part_files, read_file, read_schema

    if opts.rescore == "none":
        return set()
    ids: set = set()
    paths: set = set()
    for f in part_files(_scores_dir(out_dir)):
        names = read_schema(f).names
        t = read_file(f, [c for c in ("video_id", "path", "model_version", "rule", "meta") if c in names])
        stale = set(opts.stale(t))
        if stale:
            ids |= stale
            paths |= set(t.filter(pc.is_in(t.column("video_id"), pa.array(sorted(stale)))).column("path").to_pylist())
    if ids:
        output.replace_later(_scores_dir(out_dir), paths)
        log(f"[score] --rescore {opts.rescore}: {len(ids)} videos scored again with {opts.model_version}")
    return ids


def _score_rows(table: pa.Table):
    """The write tasks' view of the scoring stage's output (:data:`STAGE_SCHEMA`):
    (score rows, error rows)."""
    failed = pc.fill_null(pc.is_valid(table.column("error")), False)
    good = table.filter(pc.invert(failed)).drop_columns(["error"]).to_pylist()
    bad = [dict(r, stage="score") for r in table.filter(failed).select(["path", "video_id", "error"]).to_pylist()]
    return good, bad


def _score_datasets(features: str, crop: int, todo: Optional[List[str]], done: set):
    """The feature rows of ``features`` at ``crop`` to score — those in ``todo``, or (``todo``
    None) every one not in ``done`` — as a Ray dataset (none where no part holds one).  One
    block per part file (extraction writes at most --rows-per-file videos per part): each
    block's scores are committed by one write task as soon as it is scored.  The rows are
    chosen as each part is read (Arrow expressions: never a Python row filter, which
    round-trips a block through pandas and turns an all-null label column into NaN); a
    long recording kept in segments is joined by a task of its own, then scored as any
    video.  ``meta`` reaches the scoring stage as a map, as from the extraction writers."""
    from vadclip.io.features import FEATURE_SCHEMA, as_read_by_a_stage
    from vadclip.jobs.output import parts_dataset, whole_videos_dataset

    files, segmented = _files_to_score(dataset_files(features), todo, done)
    if not files:
        return
    where = pc.field("crop") == crop
    if todo is not None:
        where = where & pc.field("video_id").isin(list(todo))
    elif done:
        where = where & ~pc.field("video_id").isin(sorted(done))
    schema = as_read_by_a_stage(FEATURE_SCHEMA)
    ds = parts_dataset(files, schema, where & pc.field("snippet_start").is_null())
    if segmented:
        ds = ds.union(whole_videos_dataset(segmented, schema, pc.field("crop") == crop))
    yield ds


class RowSink(Sink):
    """Scoring's sink (:class:`vadclip.jobs.runner.Sink`): write tasks that commit each
    block's score rows and error rows, one row per video whatever a retried task delivers
    (:func:`vadclip.jobs.output.row_sink`)."""

    def __init__(self, output: ResumableOutput, name: str, rows_per_file: int) -> None:
        self.sink = row_sink(output, name, SCORE_SCHEMA, ERROR_SCHEMA, rows_per_file, _score_rows)

    def datasink(self):
        return self.sink

    def finish(self) -> List[Dict[str, Any]]:
        self.sink.close()
        return [{k: self.sink.totals.get(k, [] if k == "failures" else 0)
                 for k in ("rows", "errors", "snippets", "duplicates", "failures")}]

    def abort(self) -> None:
        self.sink.close()


def _ids_at(found: Dict[str, Any], crop: int) -> set:
    """The video ids of a feature set (as :func:`check_feature_set` found it) at ``crop``."""
    meta = found["meta"]
    return set(meta.filter(pc.equal(meta["crop"], crop)).column("video_id").to_pylist())



def _run_counts(output: ResumableOutput) -> Dict[str, Any]:
    """What this run committed (:meth:`ResumableOutput.this_run`)."""
    rows, errs = output.this_run(["video_id", "snippet_count"])
    return {"rows": len(rows), "errors": len(errs), "snippets": sum(int(r["snippet_count"]) for r in rows),
            "failures": [r["error"] for r in errs]}


@dataclass
class _Checked:
    """What :func:`_check_score` found, before any output folder changed."""
    opts: "ScoreOptions"
    operating: Dict[str, Any]
    model: Any
    version_uri: str
    identity: Dict[str, Any]
    found: Optional[Dict[str, Any]]      # the feature set's check (``--features``)
    mismatch: Any
    model_record: Dict[str, Any]
    crop: int = 0                        # ``--videos``: the crop scored
    extraction: Any = None               # ``--videos``: :class:`vadclip.jobs.extract.Checked`
    model_uri: str = ""                  # as the user gave it



def _nothing_new(c: _Checked, out_dir: str, extraction, log) -> Optional[Dict[str, Any]]:
    """A nightly run that finds nothing to extract and nothing to score (every video of the
    feature set has its score row or score error, no ``--rescore``) changes nothing: no
    lease (it fences no live run), no commit, the report and the tracking server left as
    they are; only ``score_summary.json`` says it ran.  ``extraction``: the run's
    :class:`vadclip.jobs.extract.ExtractJob` (``--videos``), else None.  Its summary, or None
    when there is work."""
    if c.opts.rescore != "none" or storage.exists(layout.events_dir(out_dir)):
        return None
    if extraction is not None:
        if not extraction.idle():
            return None
        want = c.extraction.output.row_ids()
    else:
        want = pa.array(sorted(_ids_at(c.found, c.model_record["crop"])), pa.string())
    output = ResumableOutput(_scores_dir(out_dir), layout.score_errors_dir(out_dir))
    scored, failed = (committed_column(d, "video_id") for d in (output.rows_dir, output.errors_dir))
    if pc.any(pc.invert(pc.or_(pc.is_in(want, value_set=scored), pc.is_in(want, value_set=failed)))).as_py():
        return None
    totals = output_totals(_scores_dir(out_dir))
    summary = {"videos_scored": 0, "videos_failed": 0, "videos_skipped": len(want), "nothing_new": True,
               "videos_total_in_output": totals["videos"], "anomalous_videos": totals["flagged"],
               "events": totals["events"], "scored_by": totals["scored_by"], "output": _scores_dir(out_dir),
               "model_uri": c.model_uri, "model_version_uri": c.version_uri, **c.identity,
               "report": storage.join(layout.report_dir(out_dir), "index.html")}
    if extraction is not None:
        summary["extract"] = {"videos_ok": 0, "videos_failed": 0, "videos_skipped": c.extraction.items.num_rows}
    storage.makedirs(out_dir)
    storage.write_text(storage.join(out_dir, layout.SCORE_SUMMARY), json.dumps(storage.redact_all(summary), indent=2))
    log(f"[score] nothing new: all {len(want)} videos were scored before; the folders, the report and the "
        "tracking server are left as they are")
    return summary


def _check_score(model_uri: str, out_dir: str, features: Optional[str], videos: Optional[str], extract_opts,
                 opts: "ScoreOptions", gt_path: Optional[str], tracking_uri: Optional[str], address: Optional[str],
                 log) -> _Checked:
    """Everything that can refuse a scoring run — the model and its operating point, the
    ground truth, the feature set or (``--videos``) all that extraction checks, the crop —
    reading the output folders and changing nothing in them."""
    from vadclip.model.checkpoint import weights_digest
    from vadclip.io.features import check_feature_set
    from vadclip.io.gt import check_matches, read_gt
    from vadclip.jobs.calibrate import model_operating_point
    from vadclip.jobs.cluster import ensure_ray
    from vadclip.tracking.registry import load_scoring_model, model_identity, pin_version

    if features is None and videos is None:
        raise InputError("give features= (a feature set) or videos= (raw videos)")
    gt = read_gt(gt_path) if gt_path else None   # a bad ground-truth file fails now, not after scoring
    identity = model_identity(model_uri, tracking_uri)     # the alias resolved once: one version per job
    version_uri = pin_version(model_uri, tracking_uri)
    model = load_scoring_model(version_uri, tracking_uri)
    # the event rule: the flags given, else the model's operating point, else the default
    opts, operating = opts.resolve(*model_operating_point(version_uri, tracking_uri, opts.operating_point))
    log(f"[score] events: {operating['rule']} (operating point: {operating['source']}"
        f"{'; flags over it: ' + ', '.join(operating['flags_over_it']) if operating['flags_over_it'] else ''})")
    opts = replace(opts, model_version=version_uri)
    # a feature set that cannot fit the model fails before Ray starts
    found = check_feature_set(features, model.embed_dim, crop=opts.crop) if features is not None else None
    mismatch = check_fit(model.cfg, features, f"the model {model_uri}", opts.allow_feature_mismatch, log) \
        if features is not None else None
    # a scores folder holds one crop: resuming it with another stops here (a new model version does not)
    model_record = {"model": version_uri, "weights": weights_digest(model),
                    "crop": (found["crops"][0] if found is not None else 0) if opts.crop is None else opts.crop}
    _one_crop(_scores_dir(out_dir), model_record, log)
    if gt is not None:   # ground truth named for other videos (or by another id rule) fails now too
        from vadclip.jobs.manifest import load_manifest

        ids = (found["meta"].column("video_id").to_pylist() if found is not None
               else [r["video_id"] for r in load_manifest(videos)])
        check_matches(gt, gt_path, ids, f"the videos of {features or videos}")
    ensure_ray(address)
    c = _Checked(opts, operating, model, version_uri, identity, found, mismatch, model_record, model_uri=model_uri)
    if videos is not None:
        # everything extraction can refuse (weights, decoder, manifest, provenance, the --crop
        # asked for) is checked before this run's first lease: a refused run changes no folder
        from vadclip.io.parts import read_once
        from vadclip.jobs.extract import ExtractOptions, check_run

        eo = replace(extract_opts or ExtractOptions(), clip=model.cfg.clip, snippet_len=model.cfg.snippet_len)
        c.crop = 0 if opts.crop is None else opts.crop
        if not 0 <= c.crop < eo.crops:
            raise InputError(f"--crop {c.crop}: the videos are extracted with --crops {eo.crops} "
                             f"(crops 0-{eo.crops - 1})")
        with read_once():
            c.extraction = check_run(videos, out_dir, eo, False, log, address)
    return c



class ScoreJob(Job):
    """``vadclip score``: ``features`` (a feature set) or ``videos`` (extracted into
    ``OUT/features`` in the same run, each video scored by the writer that assembles it:
    an :class:`vadclip.jobs.extract.ExtractJob` with a :class:`Scorer`), scored into
    ``OUT/scores``.  Its pipelines: the extraction's (``--videos``), then
    ``ScoreStage`` → :class:`RowSink` over whatever feature rows have no score yet (all
    of them for ``--features``; for ``--videos`` only what an interrupted run left)."""
    name = "score"

    def __init__(self, model_uri: str, out_dir: str, features: Optional[str] = None, videos: Optional[str] = None,
                 extract_opts=None, opts: Optional[ScoreOptions] = None, gt_path: Optional[str] = None,
                 tracking_uri: Optional[str] = None, experiment: str = "vadclip-score",
                 address: Optional[str] = None) -> None:
        self.features, self.videos, self.gt_path, self.out_dir = map(storage.absolute, (features, videos, gt_path,
                                                                                         out_dir))
        self.model_uri, self.extract_opts, self.opts = model_uri, extract_opts, opts or ScoreOptions()
        self.tracking_uri, self.experiment, self.address = tracking_uri, experiment, address
        self.wait_s = extract_opts.wait if extract_opts is not None else 0.0
        self.extraction = None
        self.extract_summary: Optional[Dict[str, Any]] = None
        self.scoring: Optional[Pipeline] = None

    def check(self, log) -> None:
        from vadclip.jobs.extract import ExtractJob

        self.c = _check_score(self.model_uri, self.out_dir, self.features, self.videos, self.extract_opts, self.opts,
                              self.gt_path, self.tracking_uri, self.address, log)
        if self.videos is not None:
            x = self.c.extraction
            self.extraction = ExtractJob(self.videos, self.out_dir, x.opts, address=self.address, checked=x)

    def quiet(self, log) -> Optional[Dict[str, Any]]:
        # --gt: the figures are asked for
        return _nothing_new(self.c, self.out_dir, self.extraction, log) if self.gt_path is None else None

    def outputs(self) -> List[ResumableOutput]:
        storage.makedirs(self.out_dir)
        self.output = ResumableOutput(_scores_dir(self.out_dir), layout.score_errors_dir(self.out_dir), SCORE_SCHEMA,
                                      ERROR_SCHEMA)
        return [self.output] + (self.extraction.outputs() if self.extraction is not None else [])

    def plan(self, log) -> None:
        """Under the leases: the old events table retired, the folder's rule and model
        recorded, ``--rescore``'s rows set to be replaced, the done set read, the model put
        in the object store once; for ``--videos`` the extraction's plan, whose rewritten
        recordings' score rows go with their feature rows (:meth:`Scorer.forget`)."""
        import ray

        from vadclip.model.checkpoint import checkpoint_dict

        c, out_dir, output = self.c, self.out_dir, self.output
        _retire_events_table(out_dir, log)
        storage.write_text(storage.join(_scores_dir(out_dir), RULE_FILE), json.dumps(c.opts.rules_record(),
                                                                                     sort_keys=True))
        storage.write_text(storage.join(_scores_dir(out_dir), MODEL_FILE), json.dumps(c.model_record, sort_keys=True))
        self.stale = _rescore_stale(out_dir, c.opts, output, log)  # scored again, replacing their rows
        done, _ = output.ids("video_id")           # scored by earlier runs
        self.done = done - self.stale
        self.ckpt_ref = ray.put(checkpoint_dict(c.model))
        if self.extraction is not None:
            self.extraction.scorer = Scorer(self.ckpt_ref, c.opts, c.crop, output, output.run_id)
            self.extraction.plan(log)

    def pipelines(self, log) -> Iterator[Pipeline]:
        c, output = self.c, self.output
        todo = None                                 # None: every feature row not scored yet
        if self.extraction is not None:
            from vadclip.io.features import check_feature_set
            from vadclip.jobs.extract import feature_dir

            x = self.extraction
            yield from x.pipelines(log)
            x.state.output.finish_replacing()      # before the leftovers: a rewritten file that failed is gone
            self.extract_summary = x.count(time.time(), log)
            self.done -= x.scorer.forgotten         # rewritten recordings: scored again, not skipped
            self.features = feature_dir(self.out_dir)
            c.found = check_feature_set(self.features, c.model.embed_dim, crop=c.crop)
            c.mismatch = check_fit(c.model.cfg, self.features, f"the model {c.model_uri}",
                                   c.opts.allow_feature_mismatch, log)
            scored, failed_now = output.ids("video_id")
            # rows still waiting to be replaced (rescored, or rewritten and lost with a writer) are not done
            pending = (self.stale | x.scorer.forgotten) - \
                set(_committed_values(output.rows_dir, "video_id", f"part-{output.run_id}"))
            todo = sorted(_ids_at(c.found, c.crop) - (scored - pending) - failed_now)
        crop = c.found["crops"][0] if c.opts.crop is None else c.opts.crop
        if todo is not None and not todo:
            return
        want, done, features = (set(todo) if todo is not None else _ids_at(c.found, crop) - self.done), self.done, \
            self.features

        def missing(_):
            scored, failed = output.ids("video_id")
            return sorted(want - scored - failed)

        run_id, rows = output.run_id, c.opts.rows_per_file
        self.scoring = Pipeline("score", todo, lambda todo: _score_datasets(features, crop, todo, done),
                                [ScoreStage(self.ckpt_ref, c.opts)],
                                lambda todo, rnd: RowSink(output, run_id if rnd == 1 else f"{run_id}-r{rnd}", rows),
                                missing)
        yield self.scoring

    def count(self, t0: float, log) -> Dict[str, Any]:
        n_dup = sum(r["duplicates"] for r in self.scoring.results) if self.scoring is not None else 0
        return _summary(self.c, self.model_uri, self.out_dir, self.output, self.done, len(self.stale), n_dup,
                        time.time() - t0, self.extract_summary, log)

    def finish(self, summary: Dict[str, Any], log) -> None:
        _finish(self.c, summary, self.model_uri, self.out_dir, self.features, self.gt_path, self.tracking_uri,
                self.experiment, self.output.run_id)
        log(f"[score] {summary['videos_scored']} scored, {summary['videos_failed']} failed, "
            f"{summary['videos_skipped']} already done; {summary['anomalous_videos']} flagged with "
            f"{summary['events']} events; {summary['snippets_per_s']} snippets/s → {summary['output']}")
        log(f"[score] review report: {summary['report']}")


def run_score(model_uri: str, out_dir: str, features: Optional[str] = None, videos: Optional[str] = None,
              extract_opts=None, opts: Optional[ScoreOptions] = None, gt_path: Optional[str] = None,
              tracking_uri: Optional[str] = None, experiment: str = "vadclip-score",
              address: Optional[str] = None, log=None) -> Dict[str, Any]:
    """Score an archive.  Give ``features`` (a Parquet feature set) or ``videos`` (a
    manifest/dir/glob, extracted first into ``out_dir``/features with the model's CLIP).
    Labels are optional; every distinct video gets exactly one row (resumable).  Every
    check that can refuse the run comes before its first lease (:func:`_check_score`)."""
    return run(ScoreJob(model_uri, out_dir, features, videos, extract_opts, opts, gt_path, tracking_uri, experiment,
                        address), log)


def _summary(c: _Checked, model_uri: str, out_dir: str, output: ResumableOutput, done: set, rescored: int,
             n_dup: int, elapsed: float, extract_summary, log) -> Dict[str, Any]:
    """The run's summary: this run's counts, the folder's totals over every run."""
    n = _run_counts(output)
    for line in n["failures"]:
        log(f"[score] FAILED {line}")
    totals = output_totals(_scores_dir(out_dir))
    summary: Dict[str, Any] = {
        "videos_scored": n["rows"], "videos_failed": n["errors"], "videos_skipped": len(done),
        "duplicate_rows_ignored": n_dup, "videos_rescored": rescored,
        "videos_total_in_output": totals["videos"], "anomalous_videos": totals["flagged"],
        "scored_by": totals["scored_by"],     # {model version: videos of the folder it scored}
        "events": totals["events"], "snippets": n["snippets"], "elapsed_s": round(elapsed, 3),
        "snippets_per_s": round(n["snippets"] / elapsed, 2) if elapsed > 0 else 0.0,
        "output": _scores_dir(out_dir), "model_uri": model_uri, "model_version_uri": c.version_uri, **c.identity,
        # the options, less model_version: the identity's number above stays, model_version_uri is the URI
        "snippet_len": c.model.cfg.snippet_len, **{k: v for k, v in asdict(c.opts).items() if k != "model_version"},
        "label_rule": c.model.cfg.label_rule.to_dict(),   # how the model reads labels: a rebuilt report the same
        "operating_point": c.operating,
        "feature_mismatch": c.mismatch,
    }
    failed = layout.failed_videos(out_dir)      # the folder's, over every run: extraction's and scoring's
    summary["videos_failed_total"] = len({r["video_id"] for r in failed})
    summary["failed_videos"] = failed[:layout.FAILED_LISTED]
    if extract_summary:
        summary["extract"] = {k: extract_summary[k] for k in ("videos_ok", "videos_failed", "frames_per_s")}
        summary["extract"]["decoders"] = extract_summary.get("decoders", [])
    return summary


def _finish(c: _Checked, summary: Dict[str, Any], model_uri: str, out_dir: str, features: str,
            gt_path: Optional[str], tracking_uri: Optional[str], experiment: str, run_id: str) -> None:
    """After the scoring: the ground truth's figures, the report, the MLflow run and the
    summary file (``summary`` completed in place)."""
    import ray

    from vadclip.tracking.runs import log_scoring_run

    opts = c.opts
    operating_here = None
    if gt_path and summary["videos_total_in_output"]:
        # frame-level AUC/AP need every frame score at once: one task on a worker reads them
        # (this step alone grows with the archive), never the driver
        task = ray.remote(ground_truth_figures).options(num_cpus=1, max_retries=3)
        metrics, operating_here = ray.get(task.remote(_scores_dir(out_dir), gt_path, c.model.cfg.to_dict(),
                                                      asdict(opts)))
        summary.update(metrics)

    def report(local_dir, on_figure):
        rep = build_report(out_dir, summary, gt_path=gt_path, top_n=opts.max_plots, local_dir=local_dir,
                           on_figure=on_figure, operating=operating_here, key_frames_of=key_frames_on_workers)
        summary.update(report=rep["report"], plots=rep["videos_shown"], **rep["at_operating_point"])

    log_scoring_run(experiment, tracking_uri, f"score-{run_id}",
                    {"model_uri": model_uri, "features": features,
                     **{k: v for k, v in asdict(opts).items() if k != "group_rules"}},
                    {"vadclip.feature_mismatch": c.mismatch, "vadclip.operating_point": c.operating["source"]},
                    features, summary, report, skip_metrics=asdict(opts))
    storage.write_text(storage.join(out_dir, layout.SCORE_SUMMARY),
                       json.dumps(storage.redact_all(summary), indent=2, default=float))


def key_frames_on_workers(rows: List[Dict[str, Any]], snippet_len: int) -> List[list]:
    """The report's key frames, a Ray task per flagged video: each reads its video where
    it runs (a worker node; the head offers no CPU) and returns a few small JPEGs, so the
    driver downloads no video.  A task lost with its node is run again."""
    import ray

    from vadclip.report.html import key_frame_jpegs

    import logging
    import time as _time

    from ray.exceptions import GetTimeoutError

    task = ray.remote(key_frame_jpegs).options(num_cpus=1, max_retries=3)
    refs = [task.remote(r, snippet_len) if r["events"] else None for r in rows]
    # a deadline on all of them: a video that cannot be read in time (a store that hangs) gets
    # no key frames, and the report and the job go on
    deadline, out = _time.monotonic() + KEY_FRAMES_DEADLINE_S, []
    for r, ref in zip(rows, refs):
        if ref is None:
            out.append([])
            continue
        try:
            out.append(ray.get(ref, timeout=max(1.0, deadline - _time.monotonic())))
        except GetTimeoutError:
            ray.cancel(ref, force=True)
            logging.getLogger("vadclip").warning(f"[score] report: no key frames for {r['video_id']}: not read "
                                                 f"within {KEY_FRAMES_DEADLINE_S:g} s")
            out.append([])
    return out


KEY_FRAMES_DEADLINE_S = 600.0     # for all of a report's key frames (each costs a seek and a GOP)


METRIC_COLUMNS = ("video_id", "label", "fps", "num_frames", "snippet_count", "anomaly", "class_probs")


def ground_truth_figures(scores_dir: str, gt_path: str, cfg_dict: Dict[str, Any], opts_dict: Dict[str, Any]):
    """(AUC/AP/abnormal AUC/mAP, (the operating point's statistics, the curve)) of a
    scores table against ``gt_path``, read one part at a time — run in a Ray task so
    the driver never holds the scores."""
    from vadclip.io.gt import read_gt
    from vadclip.io.parts import part_files, read_file, read_schema
    from vadclip.metrics.operating import curve, footage_of, operating_stats
    from vadclip.model.config import VadConfig

    cfg, gt = VadConfig.from_dict(cfg_dict), read_gt(gt_path)
    opts = ScoreOptions(**opts_dict)
    rule = opts.rule()

    rows = [r for f in part_files(scores_dir)
            for r in read_file(f, list(METRIC_COLUMNS) + [c for c in ("meta", "snippet_times")
                                                          if c in read_schema(f).names]).to_pylist()]
    metrics = score_metrics(rows, gt, cfg)
    footage = [footage_of(r, np.asarray(r["anomaly"], np.float64), cfg.snippet_len, gt, cfg.is_normal) for r in rows]
    groups = {}
    if opts.rule_by and opts.group_rules:        # each camera's own rule (the curve: the fallback's, scanned)
        groups = {g: EventRule(**r) for g, r in opts.group_rules.items()}
        for f, r in zip(footage, rows):
            v = meta_of(r.get("meta")).get(opts.rule_by)
            f.group = None if v is None else str(v)
    return metrics, (operating_stats(footage, rule, groups), curve(footage, rule))


def score_metrics(rows: List[Dict[str, Any]], gt, cfg) -> Dict[str, float]:
    """AUC/AP/abnormal AUC/mAP of scored rows against ground-truth intervals (read once,
    at the start of the run)."""
    from vadclip.metrics.evaluate import metrics_from_scores

    return metrics_from_scores(((r, r["anomaly"], r["class_probs"]) for r in rows), gt, cfg)
