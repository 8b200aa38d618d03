"""``vadclip compare-features A B``: how close two feature sets are on the videos and
crops they share — e.g. your own extraction of UCF-Crime or XD-Violence against the
released features — with the provenance of each side and, given a model and ground
truth, its metrics on each set side by side.

Per (video, crop): the mean over snippets of the cosine similarity of A's and B's
features, and the relative L2 distance ``||A - B|| / ||B||`` over the whole video.
Where the two hold different snippet counts for a video (another decoder's frame
count), the first ``min`` snippets are compared and the video is counted as such.
The sets are read a part file at a time on one side; the other side's rows for the
shared videos are held in memory (a test split: hundreds of videos)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from vadclip.io import provenance
from vadclip.errors import InputError
from vadclip.io.features import read_feature_rows, row_features
from vadclip.io.parts import dataset_files, read_file

COLUMNS = ["video_id", "crop", "snippet_count", "feature_dim", "features"]


def _rows(path: str) -> Dict[tuple, np.ndarray]:
    return {(r["video_id"], int(r["crop"])): row_features(r) for r in read_feature_rows(path, COLUMNS)}


def compare_features(a: str, b: str, worst: int = 5) -> Dict[str, Any]:
    """The comparison of feature sets ``a`` and ``b`` (paths or URIs) as a dict."""
    rb = _rows(b)
    per: List[Dict[str, Any]] = []
    only_a = 0
    for f in dataset_files(a, "feature set"):
        for r in read_file(f, COLUMNS).to_pylist():
            key = (r["video_id"], int(r["crop"]))
            if key not in rb:
                only_a += 1
                continue
            x, y = row_features(r), rb[key]
            if x.shape[1] != y.shape[1]:
                raise InputError(f"{a} and {b}: video {key[0]} has feature dimension {x.shape[1]} vs {y.shape[1]}")
            n = min(len(x), len(y))
            xa, ya = x[:n].astype(np.float64), y[:n].astype(np.float64)
            cos = (xa * ya).sum(1) / np.maximum(np.linalg.norm(xa, axis=1) * np.linalg.norm(ya, axis=1), 1e-12)
            per.append({"video_id": key[0], "crop": key[1], "cosine": float(cos.mean()),
                        "cosine_min": float(cos.min()),
                        "rel_l2": float(np.linalg.norm(xa - ya) / max(np.linalg.norm(ya), 1e-12)),
                        "snippets_a": len(x), "snippets_b": len(y)})
    if not per:
        raise InputError(f"{a} and {b} share no (video, crop): nothing to compare")
    cos = np.array([p["cosine"] for p in per])
    rel = np.array([p["rel_l2"] for p in per])
    pa_, pb_ = provenance.read(a), provenance.read(b)
    return {
        "a": a, "b": b, "shared": len(per), "only_a": only_a, "only_b": len(rb) - len(per),
        "snippet_count_differs": sum(p["snippets_a"] != p["snippets_b"] for p in per),
        "cosine": _stats(cos), "rel_l2": _stats(rel),
        "worst": sorted(per, key=lambda p: p["cosine"])[:worst],
        "provenance_a": pa_, "provenance_b": pb_,
        "provenance_differences": provenance.differences(pa_, pb_, provenance.SAME_FOLDER),
    }


def _stats(v: np.ndarray) -> Dict[str, float]:
    return {"mean": float(v.mean()), "min": float(v.min()), "p5": float(np.percentile(v, 5)),
            "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def metrics_side_by_side(model, a: str, b: str, gt, crop: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """The model's AUC/AP/mAP on ``a`` and on ``b`` (the videos both hold, one crop:
    ``crop`` or the lowest both have)."""
    from vadclip.metrics.evaluate import evaluate

    ra, rb = read_feature_rows(a), read_feature_rows(b)
    crops = sorted({r["crop"] for r in ra} & {r["crop"] for r in rb})
    if not crops:
        raise InputError(f"{a} and {b} share no crop")
    c = crops[0] if crop is None else crop
    shared = {r["video_id"] for r in ra if r["crop"] == c} & {r["video_id"] for r in rb if r["crop"] == c}
    out = {}
    for name, rows in (("a", ra), ("b", rb)):
        sel = [r for r in rows if r["crop"] == c and r["video_id"] in shared]
        out[name] = dict(evaluate(model, sel, gt, model.cfg), crop=c, videos=len(sel))
    return out


def table(result: Dict[str, Any]) -> str:
    """The comparison as a few lines of text (stderr; the JSON goes to stdout)."""
    c, r = result["cosine"], result["rel_l2"]
    lines = [f"A: {result['a']}  ({provenance.describe(result['provenance_a'])})",
             f"B: {result['b']}  ({provenance.describe(result['provenance_b'])})",
             f"shared video×crop rows: {result['shared']} (only in A {result['only_a']}, only in B {result['only_b']}; "
             f"different snippet counts {result['snippet_count_differs']})",
             f"{'':>8} {'mean':>8} {'min':>8} {'p5':>8} {'p50':>8} {'p95':>8} {'max':>8}",
             f"{'cosine':>8} " + " ".join(f"{c[k]:8.5f}" for k in ("mean", "min", "p5", "p50", "p95", "max")),
             f"{'rel L2':>8} " + " ".join(f"{r[k]:8.5f}" for k in ("mean", "min", "p5", "p50", "p95", "max")),
             "worst videos (by mean cosine): " + ", ".join(f"{w['video_id']}/{w['crop']} {w['cosine']:.4f}"
                                                           for w in result["worst"])]
    if result["provenance_differences"]:
        lines.append("provenance differs: " + "; ".join(result["provenance_differences"]))
    for side in ("a", "b"):
        m = (result.get("metrics") or {}).get(side)
        if m:
            lines.append(f"model on {side.upper()}: AUC {m['auc']:.4f}  AP {m['ap']:.4f}  mAP {m.get('map_avg', float('nan')):.4f}"
                         f"  ({m['videos']} videos, crop {m['crop']})")
    return "\n".join(lines)
