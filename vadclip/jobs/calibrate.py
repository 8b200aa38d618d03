"""``vadclip calibrate``: choose a model's operating point on validation footage and
keep it with the model.

The model scores the validation feature set (in this process, one part file at a time:
validation sets are small next to an archive, and only the snippet scores are kept).
:func:`vadclip.metrics.operating.calibrate` chooses the threshold for the target given
(false alarms per hour of normal footage, event recall, or the best event F1) under the
event rule's other settings (hysteresis, minimum duration, merge gap in seconds).  The
operating point is stored on the registered model version (an MLflow model version tag)
when the model is ``models:/NAME@ALIAS`` or ``models:/NAME/V``, and in a small JSON file
for a model given as a file (beside it, or where ``--operating-point`` says); the
calibration is an MLflow run of its own with the curve as a figure.

:func:`model_operating_point` finds a model's operating point again for ``score`` and
``evaluate``."""
from __future__ import annotations

import datetime
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple


from vadclip.errors import InputError, MissingInputError
from vadclip.io import storage
from vadclip.metrics.operating import EventRule, Footage, OperatingPoint
from vadclip.options import MISMATCH_HELP, option

OPERATING_POINT_SUFFIX = ".operating-point.json"
TARGETS = "target (give exactly one)"


@dataclass
class CalibrateOptions:
    """What ``calibrate`` aims for and the event rule it calibrates (the command line's flags)."""
    target_fa_per_hour: Optional[float] = option(
        None, group=TARGETS, help="the lowest threshold whose false alarms per hour of normal footage stay at or "
                                  "below this (normal footage: videos without ground-truth intervals whose label is "
                                  "normal; all of the videos when no --gt is given)")
    target_recall: Optional[float] = option(
        None, group=TARGETS, help="(needs --gt) the highest threshold whose event recall reaches this (0-1)")
    max_f1: bool = option(False, group=TARGETS, help="(needs --gt) the threshold of the best event-level F1")
    hysteresis: float = option(0.0, help="an open event closes only when the score falls this far below the "
                                         "threshold")
    min_duration_s: float = option(0.0, help="shortest event kept, in seconds")
    merge_gap_s: float = option(1.0, help="events this many seconds apart (or closer) merge into one")
    crop: Optional[int] = option(None, help="crop to score (default: the lowest crop present)")
    by: Optional[str] = option(None, help="one operating point per value of this manifest column (e.g. camera: "
                                          "each camera's own threshold; `score` applies each video's), plus one "
                                          "over all the footage for videos of any other value")
    min_videos: int = option(2, help="with --by: a value with fewer validation videos keeps the overall operating "
                                     "point")
    operating_point: Optional[str] = option(
        None, help="also write the operating point to this JSON file (a path or URI); for a model given as a file "
                   "the default is the model's path + '" + OPERATING_POINT_SUFFIX + "'")
    allow_feature_mismatch: bool = option(False, help=MISMATCH_HELP)

    def base_rule(self) -> EventRule:
        if self.hysteresis < 0 or self.min_duration_s < 0 or self.merge_gap_s < 0:
            raise InputError("calibrate: --hysteresis, --min-duration-s and --merge-gap-s must be ≥ 0")
        return EventRule(0.5, low=0.5 - self.hysteresis if self.hysteresis else None,
                         min_duration_s=self.min_duration_s, merge_gap_s=self.merge_gap_s)

    def target(self) -> Dict[str, Any]:
        given = {k: v for k, v in (("target_fa_per_hour", self.target_fa_per_hour),
                                   ("target_recall", self.target_recall), ("max_f1", self.max_f1 or None))
                 if v is not None}
        if len(given) != 1:
            raise InputError("calibrate: give exactly one of --target-fa-per-hour, --target-recall, --max-f1")
        if self.target_fa_per_hour is not None and self.target_fa_per_hour < 0:
            raise InputError(f"calibrate: --target-fa-per-hour {self.target_fa_per_hour} is negative")
        if self.target_recall is not None and not 0 < self.target_recall <= 1:
            raise InputError(f"calibrate: --target-recall {self.target_recall} is not in (0, 1]")
        return given


def default_file(model_uri: str) -> Optional[str]:
    """Where the operating point of a model file lives by default (None for MLflow URIs)."""
    from vadclip.tracking.registry import MLFLOW_SCHEMES

    return None if model_uri.startswith(MLFLOW_SCHEMES) else storage.absolute(model_uri) + OPERATING_POINT_SUFFIX


def read_operating_point(path: str) -> OperatingPoint:
    path = storage.absolute(path)
    if not storage.isfile(path):
        raise MissingInputError(f"operating point file not found: {path}")
    return OperatingPoint.from_json(storage.read_text(path), path)


def model_operating_point(model_uri: str, tracking_uri: Optional[str] = None,
                          file: Optional[str] = None) -> Tuple[Optional[OperatingPoint], str]:
    """(the operating point, where it came from): the file given; else the one stored on
    the registered model version; else the file beside a model file; else (None, 'none')."""
    from vadclip.tracking.registry import operating_point_of, registered_version

    if file:
        return read_operating_point(file), f"file {storage.absolute(file)}"
    if model_uri.startswith("models:/"):
        text = operating_point_of(model_uri, tracking_uri)
        if text:
            name, version = registered_version(model_uri, tracking_uri)
            where = f"models:/{name}/{version}"
            return OperatingPoint.from_json(text, f"the operating point tag of {where}"), \
                f"{where} (model version tag)"
        return None, "none"
    beside = default_file(model_uri)
    if beside and storage.isfile(beside):
        return read_operating_point(beside), f"file {beside}"
    return None, "none"


def validation_footage(model, features: str, crop: int, gt, log,
                       by: Optional[str] = None) -> Tuple[List[Footage], List[str], int]:
    """The model's snippet scores of each video of ``features`` at ``crop`` as
    :class:`Footage` (one part file at a time; a video held twice counts once); rows
    whose features cannot be used are skipped with a warning.  ``by``: each footage's
    group is its value of that manifest column (None where it has none).  Returns
    (footage, ids, rows skipped)."""
    import torch

    from vadclip.io.features import check_features, meta_of, row_features, whole_videos
    from vadclip.io.parts import dataset_files, read_file, read_schema
    from vadclip.metrics.operating import footage_of
    from vadclip.model.network import score_video

    cfg = model.cfg

    out, ids, seen, skipped = [], [], set(), 0
    cols = ["video_id", "path", "label", "crop", "fps", "num_frames", "snippet_count", "feature_dim", "features"]
    segments: List[Dict] = []       # long recordings' segment rows, joined once all are read

    def rows_of():
        for f in dataset_files(features):
            names = read_schema(f).names
            here = cols + [c for c in (("meta",) if by else ()) + ("snippet_times", "snippet_start") if c in names]
            for r in read_file(f, here, filters=[("crop", "=", crop)]).to_pylist():
                if r.get("snippet_start") is None:
                    yield r
                else:
                    segments.append(r)
        yield from whole_videos(segments)

    with torch.no_grad():
        for r in rows_of():
            if r["video_id"] in seen:
                continue
            seen.add(r["video_id"])
            try:
                x = check_features(row_features(r), f"{r['path']} ({r['video_id']})", model.embed_dim)
            except InputError as e:
                log(f"[calibrate] skipped: {e}")
                skipped += 1
                continue
            anomaly, _ = score_video(model, x)
            out.append(footage_of(r, anomaly, cfg.snippet_len, gt, cfg.is_normal))
            if by:
                v = meta_of(r.get("meta")).get(by)
                out[-1].group = None if v is None or v == "" else str(v)
            ids.append(r["video_id"])
    return out, ids, skipped


def _choose(videos, base, target: Dict[str, Any], opts: "CalibrateOptions", chosen_by: Dict[str, Any],
            features: str, log):
    """(rule, its figures on the footage, the thresholds scanned, per-group points) for the
    target: one point, or with ``--by`` one per group that has enough videos (the rest
    keep the overall point; ``chosen_by`` records which, in place)."""
    from vadclip.metrics.operating import calibrate, calibrate_by

    if not opts.by:
        rule, stats, scanned = calibrate(videos, base, **target)
        return rule, stats, scanned, {}
    if not any(v.group is not None for v in videos):
        raise InputError(f"calibrate --by {opts.by}: no video of {features} has a {opts.by!r} value (its "
                         f"manifest's {opts.by!r} column reaches the feature rows' meta)")
    rule, stats, scanned, found_groups = calibrate_by(videos, base, max(1, opts.min_videos), **target)
    groups = {g: x for g, x in found_groups.items() if "rule" in x}
    kept = {g: x["fallback"] for g, x in found_groups.items() if "rule" not in x}
    chosen_by.update(by=opts.by, min_videos=opts.min_videos, **({"fallback_groups": kept} if kept else {}))
    for g, x in found_groups.items():
        log(f"[calibrate] {opts.by} {g}: " + (
            f"threshold {x['rule']['threshold']:.4g} ({x['videos']} videos, "
            f"{x['on_validation']['false_alarms_per_hour']:.3g} false alarms per hour)" if "rule" in x
            else f"the overall operating point ({x['fallback']})"))
    return rule, stats, scanned, groups


def _store(op: OperatingPoint, scanned, stats, model_uri: str, features: str, opts: "CalibrateOptions",
           tracking_uri: Optional[str], experiment: str):
    """The operating point logged (an MLflow run with its curve) and stored: on the model
    version and/or in a file.  Returns (the MLflow run id, where it was stored)."""
    from vadclip.report.html import plot_operating_curve
    from vadclip.tracking.registry import store_operating_point
    from vadclip.tracking.runs import log_calibration_run

    fig = plot_operating_curve(scanned, stats, title=f"{model_uri} on {storage.basename(features)}")
    try:
        run_id = log_calibration_run(experiment, tracking_uri, model_uri, features, op, scanned, fig)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    stored = []
    where = store_operating_point(model_uri, tracking_uri, op.to_json(), run_id)
    if where:
        stored.append(f"{where} (model version tag)")
    path = opts.operating_point or default_file(model_uri)
    if path:
        storage.write_text(storage.absolute(path), op.to_json())
        stored.append(storage.absolute(path))
    return run_id, stored


def run_calibrate(model_uri: str, features: str, gt_path: Optional[str] = None,
                  opts: Optional[CalibrateOptions] = None, tracking_uri: Optional[str] = None,
                  experiment: str = "vadclip-calibrate", log=None) -> Dict[str, Any]:
    """Choose ``model_uri``'s operating point on ``features`` (and ``gt_path``), store it
    with the model and return it with what it gives on the validation footage."""
    from vadclip.io.features import check_feature_set
    from vadclip.io.gt import check_matches, read_gt
    from vadclip.io.provenance import check_fit
    from vadclip.tracking.registry import MLFLOW_SCHEMES, load_scoring_model, pin_version, registered_version

    log = log or logging.getLogger("vadclip").info
    opts = opts or CalibrateOptions()
    target = opts.target()
    base = opts.base_rule()
    if (opts.target_recall is not None or opts.max_f1) and not gt_path:
        raise InputError("calibrate: --target-recall and --max-f1 need --gt (ground-truth intervals)")
    features = storage.absolute(features)
    gt = read_gt(gt_path) if gt_path else None
    model_uri = pin_version(model_uri, tracking_uri)   # the alias resolved once: the version scored holds the point
    registered = registered_version(model_uri, tracking_uri)
    if registered is None and model_uri.startswith(MLFLOW_SCHEMES) and not opts.operating_point:
        raise InputError(f"calibrate: {model_uri} is not a registered model version, so it cannot hold the "
                         "operating point; give --operating-point FILE (score reads it back with the same flag)")
    model = load_scoring_model(model_uri, tracking_uri)
    fs = check_feature_set(features, model.embed_dim, crop=opts.crop)
    mismatch = check_fit(model.cfg, features, f"the model {model_uri}", opts.allow_feature_mismatch, log)
    crop = fs["crops"][0] if opts.crop is None else opts.crop
    videos, ids, skipped = validation_footage(model, features, crop, gt, log, by=opts.by)
    if gt is not None:
        check_matches(gt, gt_path, ids, f"the videos of {features}")
    chosen_by = dict(target, ground_truth=storage.absolute(gt_path) if gt_path else None)
    rule, stats, scanned, groups = _choose(videos, base, target, opts, chosen_by, features, log)
    op = OperatingPoint(rule, chosen_by=chosen_by, on_validation=stats, features=features, model=model_uri,
                        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        by=opts.by, groups=groups)
    run_id, stored = _store(op, scanned, stats, model_uri, features, opts, tracking_uri, experiment)
    hours = sum(v.hours for v in videos)
    step = 1.0 / stats["normal_hours"] if stats["normal_hours"] > 0 else float("inf")
    if opts.target_fa_per_hour is not None and step > opts.target_fa_per_hour:
        log(f"[calibrate] WARNING the normal footage ({stats['normal_hours']:.3g} h) is too short to measure "
            f"{opts.target_fa_per_hour:g} false alarms per hour: one alarm in it is {step:.3g} per hour, so the "
            f"threshold chosen allows none; calibrate on at least {1.0 / max(opts.target_fa_per_hour, 1e-9):.3g} h "
            "of normal footage for this target")
    log(f"[calibrate] threshold {rule.threshold:.4g} ({', '.join(f'{k}={v}' for k, v in target.items())}): "
        f"{stats['false_alarms_per_hour']:.3g} false alarms per hour of normal footage "
        f"({stats['normal_hours']:.3g} h), event recall {stats['event_recall']:.3g}, "
        f"event precision {stats['event_precision']:.3g} on {len(videos)} videos ({hours:.3g} h); "
        f"stored in {' and '.join(stored)}")
    return {"threshold": rule.threshold, "operating_point": op.to_dict(), "stored": stored,
            **({"by": opts.by, "thresholds_by": {g: x["rule"]["threshold"] for g, x in groups.items()}}
               if opts.by else {}),
            "videos": len(videos), "videos_skipped": skipped, "hours": hours, "crop": crop,
            "false_alarms_per_hour_resolution": step if math.isfinite(step) else None,
            "curve_points": len(scanned), "mlflow_run_id": run_id,
            **({"feature_mismatch": mismatch} if mismatch else {})}
