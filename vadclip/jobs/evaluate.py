"""Evaluating a model (a registered ``models:/NAME@ALIAS``, another MLflow model URI, or a
checkpoint file) on a feature set with ground truth, and comparing two feature sets —
``vadclip evaluate`` and ``vadclip compare-features``, callable from Python."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

from vadclip.errors import InputError


def run_evaluate(model: str, features: str, gt_path: str, crop: Optional[int] = None,
                 tracking_uri: Optional[str] = None, allow_feature_mismatch: bool = False,
                 log=None) -> Dict[str, Any]:
    """Frame AUC/AP, abnormal-only AUC and mAP@IoU of ``model`` on ``features`` (one
    crop: ``crop``, default the lowest present) against ``gt_path``."""
    from vadclip.io.features import check_feature_set, read_feature_rows
    from vadclip.io.gt import check_matches, read_gt
    from vadclip.jobs.score import check_fit
    from vadclip.metrics.evaluate import evaluate
    from vadclip.tracking.registry import load_scoring_model

    log = log or logging.getLogger("vadclip").info
    gt = read_gt(gt_path)
    scoring = load_scoring_model(model, tracking_uri)
    fs = check_feature_set(features, scoring.embed_dim, crop=crop)
    mismatch = check_fit(scoring.cfg, features, f"the model {model}", allow_feature_mismatch, log)
    crop = fs["crops"][0] if crop is None else crop
    rows = [r for r in read_feature_rows(features) if r["crop"] == crop]
    check_matches(gt, gt_path, [r["video_id"] for r in rows], f"the videos of {features}")
    return dict(evaluate(scoring, rows, gt, scoring.cfg), crop=crop, videos=len(rows),
                **({"feature_mismatch": mismatch} if mismatch else {}))


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
