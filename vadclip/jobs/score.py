"""Archive scoring as a Ray Data job: feature rows (or raw videos, extracted first)
→ model actor pool → per-video Parquet rows with per-snippet anomaly scores,
per-class probabilities and thresholded, merged event segments.  Resumable; failures
go to an errors table; the run ends with the review report (:mod:`vadclip.report.html`:
summary, events, timelines and key frames of the top flagged videos) beside the
scores, and the summary metrics (AUC/AP/mAP given ground truth), the summary and the
report are logged to MLflow."""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from vadclip.io import storage
from vadclip.errors import InputError
from vadclip.options import MISMATCH_HELP, option
from vadclip.io.features import ERROR_SCHEMA
from vadclip.io.parts import (PartWriter, dataset_files, new_run_id, read_column, read_table,
                    remove_uncommitted)
from vadclip.report.html import build_report, output_totals

EVENT_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("start_frame", pa.int64()),
                        ("end_frame", pa.int64()), ("class_name", pa.string()), ("score", pa.float64())])
SCORE_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("label", pa.string()), ("fps", pa.float64()),
    ("num_frames", pa.int64()), ("snippet_count", pa.int64()), ("classes", pa.list_(pa.string())),
    ("anomaly", pa.list_(pa.float32())), ("class_probs", pa.list_(pa.float32())),
    ("video_score", pa.float64()), ("predicted_class", pa.string()), ("flagged", pa.bool_()),
    ("events", pa.list_(EVENT_TYPE)),
])


@dataclass
class ScoreOptions:
    """How a model's scores become events and outputs (the command line's flags are these fields)."""
    threshold: float = option(0.5, help="snippet anomaly threshold for events")
    merge_gap: int = option(1, help="merge events this many snippets apart")
    min_snippets: int = option(1, help="shortest event kept (snippets)")
    num_scorers: int = option(1, help="size of the scoring actor pool")
    crop: Optional[int] = option(None, help="crop to score (default: the lowest crop present)")
    rows_per_file: int = option(256, cli=False, help="scored videos per Parquet part file (at most)")
    flush_seconds: float = option(60.0, cli=False, help="scored rows are written at least this often")
    max_plots: int = option(50, help="videos given a page in the report: flagged ones first (with key frames), "
                                     "then by score")
    allow_feature_mismatch: bool = option(False, help=MISMATCH_HELP)


def find_events(anomaly: np.ndarray, probs: np.ndarray, classes: Sequence[str], fps: float, num_frames: int,
                opts: ScoreOptions, snippet_len: int = 16) -> List[Dict[str, Any]]:
    """Runs of snippets with anomaly > threshold, merged across gaps ≤ merge_gap;
    each event gets the abnormal class with the highest mean probability over it."""
    on = anomaly > opts.threshold
    runs, start = [], None
    for i, v in enumerate(on.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append([start, i])
            start = None
    merged: List[List[int]] = []
    for r in runs:
        if merged and r[0] - merged[-1][1] <= opts.merge_gap:
            merged[-1][1] = r[1]
        else:
            merged.append(r)
    events = []
    for s, e in merged:
        if e - s < opts.min_snippets:
            continue
        c = 1 + int(np.argmax(probs[s:e, 1:].mean(0))) if probs.shape[1] > 1 else 0
        sf, ef = s * snippet_len, min(e * snippet_len, num_frames)
        events.append({"start_s": sf / fps, "end_s": ef / fps, "start_frame": sf, "end_frame": ef,
                       "class_name": classes[c], "score": float(anomaly[s:e].mean())})
    return events


class ScoreStage:
    """Ray Data ``map_batches`` actor stage: feature rows → per-snippet anomaly scores,
    class probabilities, video score, events and the flag, one output row per input
    row.  A row whose features cannot be used (wrong dimension, NaN, empty) gets its
    error recorded, never dropped; anything else is the environment's and Ray retries.

    ``checkpoint`` is a checkpoint dict (or a Ray object reference to one, so that a
    pool of actors shares one copy of the weights)."""

    def __init__(self, checkpoint, opts: ScoreOptions) -> None:
        from vadclip.model.checkpoint import load_checkpoint

        if not isinstance(checkpoint, dict):
            import ray

            checkpoint = ray.get(checkpoint)
        self.model = load_checkpoint(checkpoint)
        self.opts = opts
        self.classes = list(self.model.cfg.class_keys)

    @staticmethod
    def ray_args(checkpoint_ref, opts: ScoreOptions) -> Dict[str, Any]:
        """What one scorer actor needs, for ``map_batches`` (one CPU; the model is small)."""
        from ray.data import ActorPoolStrategy

        return {"fn_constructor_args": (checkpoint_ref, opts), "batch_size": 8, "batch_format": "numpy",
                "compute": ActorPoolStrategy(size=opts.num_scorers), "num_cpus": 1,
                "max_restarts": 3, "max_task_retries": 3}

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        from vadclip.io.features import check_features, row_features
        from vadclip.model.losses import topk_count
        from vadclip.model.network import score_video

        out: Dict[str, list] = {k: [] for k in ("video_id", "path", "label", "fps", "num_frames", "snippet_count",
                                                "anomaly", "class_probs", "video_score", "predicted_class",
                                                "flagged", "events", "error")}
        for i in range(len(batch["video_id"])):
            row = {k: batch[k][i] for k in batch}
            for k in ("video_id", "path", "label", "fps", "num_frames", "snippet_count"):
                out[k].append(row[k])
            try:
                f = check_features(row_features(row), f"{row['path']} ({row['video_id']})", self.model.embed_dim)
                anomaly, probs = score_video(self.model, f)
                vscore = float(np.sort(anomaly)[::-1][:topk_count(len(anomaly))].mean())
                ev = find_events(anomaly, probs, self.classes, float(row["fps"]) or 30.0,
                                 int(row["num_frames"]) or len(anomaly) * 16, self.opts,
                                 self.model.cfg.snippet_len)
                # flagged ⇔ at least one event; the video's class is that of its strongest event
                pcls = max(ev, key=lambda e: e["score"])["class_name"] if ev else self.classes[0]
                out["anomaly"].append(anomaly.astype(np.float32))
                out["class_probs"].append(probs.astype(np.float32).reshape(-1))
                out["video_score"].append(vscore)
                out["predicted_class"].append(pcls)
                out["flagged"].append(bool(ev))
                out["events"].append(json.dumps(ev))
                out["error"].append("")
            except InputError as e:  # a problem of this row's features: recorded, never dropped
                out["anomaly"].append(np.zeros(0, np.float32))
                out["class_probs"].append(np.zeros(0, np.float32))
                out["video_score"].append(float("nan"))
                out["predicted_class"].append("")
                out["flagged"].append(False)
                out["events"].append("[]")
                out["error"].append(f"{row['path']}: {type(e).__name__}: {e}")
        res = {k: (np.asarray(v + [None], dtype=object)[:-1] if k in ("anomaly", "class_probs") else np.asarray(v))
               for k, v in out.items()}
        return res


def _scores_dir(out_dir: str) -> str:
    return storage.join(out_dir, "scores")


def run_score(model_uri: str, out_dir: str, features: Optional[str] = None, videos: Optional[str] = None,
              extract_opts=None, opts: Optional[ScoreOptions] = None, gt_path: Optional[str] = None,
              tracking_uri: Optional[str] = None, experiment: str = "vadclip-score",
              address: Optional[str] = None, log=None) -> Dict[str, Any]:
    """Score an archive.  Give ``features`` (a Parquet feature set) or ``videos`` (a
    manifest/dir/glob, extracted first into ``out_dir``/features with the model's CLIP).
    Labels are optional; every distinct video gets exactly one row (resumable)."""
    log = log or logging.getLogger("vadclip").info
    import mlflow
    import ray
    import ray.data
    from ray.data.expressions import col

    from vadclip.model.checkpoint import checkpoint_dict
    from vadclip.io.features import check_feature_set
    from vadclip.io.gt import check_matches, read_gt
    from vadclip.jobs.cluster import ensure_ray
    from vadclip.tracking.registry import load_scoring_model
    from vadclip.io.storage import absolute
    from vadclip.tracking.runs import log_feature_set, use_experiment

    features, videos, gt_path, out_dir = map(absolute, (features, videos, gt_path, out_dir))
    opts = opts or ScoreOptions()
    if features is None and videos is None:
        raise InputError("give features= (a feature set) or videos= (raw videos)")
    gt = read_gt(gt_path) if gt_path else None   # a bad ground-truth file fails now, not after scoring
    model = load_scoring_model(model_uri, tracking_uri)
    cfg = model.cfg
    # a feature set that cannot fit the model fails before Ray starts
    found = check_feature_set(features, model.embed_dim, crop=opts.crop) if features is not None else None
    mismatch = check_fit(cfg, features, f"the model {model_uri}", opts.allow_feature_mismatch, log) \
        if features is not None else None
    if gt is not None:   # ground truth named for other videos (or by another id rule) fails now too
        from vadclip.jobs.extract import load_manifest

        ids = (found["meta"].column("video_id").to_pylist() if found is not None
               else [r["video_id"] for r in load_manifest(videos)])
        check_matches(gt, gt_path, ids, f"the videos of {features or videos}")
    ensure_ray(address)
    storage.makedirs(out_dir)
    for d in (_scores_dir(out_dir), storage.join(out_dir, "score_errors")):
        remove_uncommitted(d)
    t0 = time.time()
    extract_summary = None
    if features is None:
        from vadclip.jobs.extract import ExtractOptions, feature_dir, run_extract

        eo = extract_opts or ExtractOptions()
        eo = replace(eo, clip=cfg.clip, snippet_len=cfg.snippet_len)
        extract_summary = run_extract(videos, out_dir, eo, log=log)
        features = feature_dir(out_dir)
        found = check_feature_set(features, model.embed_dim, crop=opts.crop)
        mismatch = check_fit(cfg, features, f"the model {model_uri}", opts.allow_feature_mismatch, log)
    crop = found["crops"][0] if opts.crop is None else opts.crop

    done = set(read_column(_scores_dir(out_dir), "video_id"))
    # column expressions, not Python row filters: a row filter round-trips the
    # block through pandas and turns an all-null label column into float NaN
    ds = ray.data.read_parquet(dataset_files(features)).filter(expr=col("crop") == crop)
    if done:
        ds = ds.filter(expr=col("video_id").not_in(sorted(done)))
    ckpt_ref = ray.put(checkpoint_dict(model))
    ds = ds.map_batches(ScoreStage, **ScoreStage.ray_args(ckpt_ref, opts))
    run_id = new_run_id()
    sw = PartWriter(_scores_dir(out_dir), SCORE_SCHEMA, opts.rows_per_file, run_id, opts.flush_seconds)
    ew = PartWriter(storage.join(out_dir, "score_errors"), ERROR_SCHEMA, 64, run_id, opts.flush_seconds)
    n_ok = n_err = n_snip = n_dup = 0
    seen = set(done)
    for r in ds.iter_rows():
        sw.tick()
        ew.tick()
        if r["video_id"] in seen:  # a feature set holding a video twice still scores it once
            n_dup += 1
            continue
        seen.add(r["video_id"])
        if r["error"]:
            ew.add([{"path": r["path"], "video_id": r["video_id"], "stage": "score", "error": r["error"]}])
            n_err += 1
            log(f"[score] FAILED {r['error']}")
            continue
        row = {"video_id": r["video_id"], "path": r["path"], "label": r["label"], "fps": float(r["fps"]),
               "num_frames": int(r["num_frames"]), "snippet_count": int(r["snippet_count"]),
               "classes": list(cfg.class_keys), "anomaly": np.asarray(r["anomaly"], np.float32),
               "class_probs": np.asarray(r["class_probs"], np.float32), "video_score": float(r["video_score"]),
               "predicted_class": r["predicted_class"], "flagged": bool(r["flagged"]),
               "events": json.loads(r["events"])}
        sw.add([row])
        n_ok += 1
        n_snip += int(r["snippet_count"])
    sw.flush()
    ew.flush()
    elapsed = time.time() - t0
    totals = output_totals(_scores_dir(out_dir))
    summary: Dict[str, Any] = {
        "videos_scored": n_ok, "videos_failed": n_err, "videos_skipped": len(done),
        "duplicate_rows_ignored": n_dup,
        "videos_total_in_output": totals["videos"], "anomalous_videos": totals["flagged"],
        "events": totals["events"], "snippets": n_snip, "elapsed_s": round(elapsed, 3),
        "snippets_per_s": round(n_snip / elapsed, 2) if elapsed > 0 else 0.0,
        "output": _scores_dir(out_dir), "model_uri": model_uri, **_model_identity(model_uri, tracking_uri),
        "snippet_len": cfg.snippet_len, **asdict(opts), "feature_mismatch": mismatch,
    }
    summary["videos_failed_total"] = len(read_column(storage.join(out_dir, "score_errors"), "video_id"))
    if extract_summary:
        summary["extract"] = {k: extract_summary[k] for k in ("videos_ok", "videos_failed", "frames_per_s")}
        summary["extract"]["decoders"] = extract_summary.get("decoders", [])
    if gt_path and totals["videos"]:
        # frame-level AUC/AP need every frame score at once: this step (only) grows with the archive
        rows = read_table(_scores_dir(out_dir), columns=list(METRIC_COLUMNS)).to_pylist()
        summary.update(score_metrics(rows, gt, cfg))
        del rows
    use_experiment(experiment, tracking_uri)
    summary["tracking_uri"] = mlflow.get_tracking_uri()
    with mlflow.start_run(run_name=f"score-{run_id}") as run, \
            tempfile.TemporaryDirectory(prefix="vadclip-report-") as report_dir:
        summary["mlflow_run_id"] = run.info.run_id
        mlflow.log_params({"model_uri": model_uri, "features": features, **asdict(opts)})
        if mismatch:
            mlflow.set_tag("vadclip.feature_mismatch", mismatch)
        log_feature_set(features, "archive", "scoring")
        rep = build_report(out_dir, summary, gt_path=gt_path, top_n=opts.max_plots, local_dir=report_dir,
                           on_figure=lambda fig, name: mlflow.log_figure(fig, f"timelines/{name}"))
        summary.update(report=rep["report"], plots=rep["videos_shown"])
        mlflow.log_metrics({k: float(v) for k, v in summary.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                            and k not in asdict(opts)})
        mlflow.log_dict(summary, "score_summary.json")
        mlflow.log_artifacts(report_dir, artifact_path="report")
    storage.write_text(storage.join(out_dir, "score_summary.json"), json.dumps(summary, indent=2, default=float))
    log(f"[score] {n_ok} scored, {n_err} failed, {len(done)} already done; "
        f"{summary['anomalous_videos']} flagged with {summary['events']} events; "
        f"{summary['snippets_per_s']} snippets/s → {summary['output']}")
    log(f"[score] review report: {summary['report']}")
    return summary


def check_fit(cfg, features: str, model_name: str, allow: bool = False, log=None) -> Optional[str]:
    """Do ``features`` fit a model of config ``cfg`` (the provenance of its training
    features against theirs)?  A mismatch is a one-line :class:`ProvenanceError` naming
    both sides, or, with ``allow``, a warning line that is returned for the record."""
    from vadclip.io import provenance

    line = provenance.mismatch(cfg.feature_provenance, provenance.read(features), model_name,
                               f"the features {features}")
    if line and not allow:
        raise provenance.ProvenanceError(line + "; --allow-feature-mismatch scores anyway (and records it)")
    if line:
        (log or logging.getLogger("vadclip").info)(f"[score] WARNING {line} (scored anyway: --allow-feature-mismatch)")
    return line


def _model_identity(model_uri: str, tracking_uri: Optional[str]) -> Dict[str, Any]:
    """Registered name, version and alias of ``models:/NAME@ALIAS`` or ``models:/NAME/V``."""
    if not model_uri.startswith("models:/"):
        return {}
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = model_uri[len("models:/"):]
    name, alias, version = ref, None, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, version = ref.split("/", 1)
    try:
        if alias:
            version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version
    except MlflowException:
        pass
    return {"model_name": name, "model_version": version, "model_alias": alias}


METRIC_COLUMNS = ("video_id", "label", "num_frames", "snippet_count", "anomaly", "class_probs")


def score_metrics(rows: List[Dict[str, Any]], gt, cfg) -> Dict[str, float]:
    """AUC/AP/abnormal AUC/mAP of scored rows against ground-truth intervals (read once,
    at the start of the run)."""
    from vadclip.metrics.evaluate import metrics_from_scores

    return metrics_from_scores(((r, r["anomaly"], r["class_probs"]) for r in rows), gt, cfg)
