"""Evaluation: the one per-video loop behind every metric the project reports —
during training (:mod:`vadclip.jobs.train`), by ``vadclip evaluate`` and at the end of a
scoring run (:mod:`vadclip.jobs.score`).  Each video's snippet scores are expanded to
frames and set against its frame ground truth: frame AUC/AP of the C-branch and of
the A-branch (1 − p(normal)), and fine-grained detection mAP at IoU 0.1–0.5."""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from vadclip.model.config import VadConfig
from vadclip.io.gt import Intervals, intervals_of
from vadclip.metrics.measures import detection_map, expand_snippets, frame_metrics, intervals_to_frames


def video_gt(row: Dict, gt: Intervals, cfg: VadConfig) -> Tuple[np.ndarray, List[Tuple[int, int]], List[int]]:
    """Frame labels, mAP segments and segment classes of one evaluation video."""
    n = int(row["num_frames"]) or int(row["snippet_count"]) * cfg.snippet_len
    ivs = intervals_of(gt, row["video_id"])
    frames = intervals_to_frames([(s, e) for s, e, _ in ivs], n)
    if not ivs:   # a normal video: one class-0 segment, or none (official UCF-Crime)
        return (frames, [(0, n)], [0]) if cfg.map_normal_segments else (frames, [], [])
    vec = cfg.label_vector(row["label"]) if row.get("label") else None
    default_cls = int(np.argmax(vec[1:]) + 1) if vec is not None and vec[1:].any() else 1
    classes = []
    for _, _, lab in ivs:
        classes.append(int(np.argmax(cfg.label_vector(lab)[1:]) + 1) if lab else default_cls)
    return frames, [(s, e) for s, e, _ in ivs], classes


def metrics_from_scores(scored: Iterable[Tuple[Dict, np.ndarray, np.ndarray]], gt: Intervals, cfg: VadConfig,
                        with_map: bool = True) -> Dict[str, float]:
    """Metrics of ``(row, anomaly [T], class probabilities [T, C])`` per video: frame
    AUC/AP (C-branch), abnormal-only AUC, A-branch AUC/AP (``auc_align``/``ap_align``)
    and, ``with_map``, mAP at IoU 0.1–0.5 and their mean."""
    s_c, s_a, gts, preds, segs, labs = [], [], [], [], [], []
    for row, anomaly, probs in scored:
        probs = np.asarray(probs, np.float32).reshape(len(anomaly), -1)
        frames, seg, lab = video_gt(row, gt, cfg)
        n = len(frames)
        s_c.append(expand_snippets(np.asarray(anomaly, np.float32), n, cfg.snippet_len))
        s_a.append(expand_snippets(1.0 - probs[:, 0], n, cfg.snippet_len))
        gts.append(frames)
        preds.append(expand_snippets(probs, n, cfg.snippet_len))
        segs.append(seg)
        labs.append(lab)
    m = frame_metrics(s_c, gts)
    m2 = frame_metrics(s_a, gts)
    m["auc_align"], m["ap_align"] = m2["auc"], m2["ap"]
    if with_map:
        maps, avg = detection_map(preds, segs, labs)
        for th, v in zip((1, 2, 3, 4, 5), maps):
            m[f"map_iou0{th}"] = v
        m["map_avg"] = avg
    return m


def evaluate(model, rows: Sequence[Dict], gt: Intervals, cfg: VadConfig, device: str = "cpu",
             with_map: bool = True) -> Dict[str, float]:
    """Score each feature row with ``model`` and compute :func:`metrics_from_scores`."""
    import torch

    from vadclip.io.features import row_features
    from vadclip.model.network import score_video

    with torch.no_grad():
        return metrics_from_scores(((r, *score_video(model, row_features(r), device)) for r in rows),
                                   gt, cfg, with_map)
