"""Evaluating a model (a registered ``models:/NAME@ALIAS``, another MLflow model URI, or a
checkpoint file) on a feature set with ground truth, and comparing two feature sets —
``vadclip evaluate`` and ``vadclip compare-features``, callable from Python."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

from vadclip.errors import InputError


def run_evaluate(model: str, features: str, gt_path: str, crop: Optional[int] = None,
                 tracking_uri: Optional[str] = None, allow_feature_mismatch: bool = False,
                 operating_point: Optional[str] = None, log=None) -> Dict[str, Any]:
    """Frame AUC/AP, abnormal-only AUC and mAP@IoU of ``model`` on ``features`` (one
    crop: ``crop``, default the lowest present) against ``gt_path``; and, at the model's
    operating point (``operating_point``: a file instead of the model's own; none: the
    default rule), false alarms per hour of normal footage, event recall and precision."""
    import torch

    from vadclip.io.features import check_feature_set, meta_of, read_feature_rows, row_features
    from vadclip.io.gt import check_matches, read_gt
    from vadclip.jobs.calibrate import model_operating_point
    from vadclip.io.provenance import check_fit
    from vadclip.metrics.evaluate import metrics_from_scores
    from vadclip.metrics.operating import DEFAULT_RULE, footage_of, operating_stats
    from vadclip.model.network import score_video
    from vadclip.tracking.registry import load_scoring_model

    log = log or logging.getLogger("vadclip").info
    gt = read_gt(gt_path)
    scoring = load_scoring_model(model, tracking_uri)
    op, source = model_operating_point(model, tracking_uri, operating_point)
    fs = check_feature_set(features, scoring.embed_dim, crop=crop)
    mismatch = check_fit(scoring.cfg, features, f"the model {model}", allow_feature_mismatch, log)
    crop = fs["crops"][0] if crop is None else crop
    rows = [r for r in read_feature_rows(features) if r["crop"] == crop]
    check_matches(gt, gt_path, [r["video_id"] for r in rows], f"the videos of {features}")
    cfg = scoring.cfg
    with torch.no_grad():
        scored = [(r, *score_video(scoring, row_features(r))) for r in rows]
    out = dict(metrics_from_scores(scored, gt, cfg), crop=crop, videos=len(rows))

    rule = op.rule if op is not None else DEFAULT_RULE
    footage = [footage_of(r, a, cfg.snippet_len, gt, cfg.is_normal) for r, a, _ in scored]
    groups = op.group_rules() if op is not None else {}
    if groups:        # calibrated --by a column: each video judged by its value's rule
        for f, (r, _, _) in zip(footage, scored):
            v = meta_of(r.get("meta")).get(op.by)
            f.group = None if v is None else str(v)
    stats = operating_stats(footage, rule, groups)
    out["operating_point"] = {"source": source if op is not None else "none (the default rule)",
                              "rule": rule.describe(), **stats,
                              **({"by": op.by, "threshold_by_value": {g: r.threshold for g, r in groups.items()}}
                                 if groups else {})}
    return dict(out, **({"feature_mismatch": mismatch} if mismatch else {}))


def run_compare(a: str, b: str, model: Optional[str] = None, gt_path: Optional[str] = None,
                crop: Optional[int] = None, worst: int = 5,
                tracking_uri: Optional[str] = None) -> Tuple[Dict[str, Any], str]:
    """How close two feature sets are (and, with ``model`` and ``gt_path``, the model's
    metrics on each); returns the result and a table to print."""
    from vadclip.io.storage import absolute
    from vadclip.metrics.compare import compare_features, metrics_side_by_side, table

    if model and not gt_path:
        raise InputError("compare-features --model needs --gt (the metrics are computed against ground truth)")
    a, b = absolute(a), absolute(b)
    out = compare_features(a, b, worst)
    if model:
        from vadclip.io.gt import read_gt
        from vadclip.tracking.registry import load_scoring_model

        out["metrics"] = metrics_side_by_side(load_scoring_model(model, tracking_uri), a, b, read_gt(gt_path), crop)
    return out, table(out)
