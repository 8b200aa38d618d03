"""Evaluation: frame-level AUC / AP, AUC on abnormal videos only, and fine-grained
detection mAP at IoU 0.1–0.5 following the official definition
(nwpu-zxr/VadCLIP ``ucf_detectionMAP.py`` / ``xd_detectionMAP.py``).

Snippet scores become frame scores by repeating each snippet ``snippet_len`` (16) times.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def expand_snippets(scores: np.ndarray, num_frames: Optional[int] = None, snippet_len: int = 16) -> np.ndarray:
    """Snippet scores [T(, C)] → frame scores [T*16(, C)], cut or edge-padded to ``num_frames``."""
    out = np.repeat(np.asarray(scores), snippet_len, axis=0)
    if num_frames is None:
        return out
    if num_frames <= out.shape[0]:
        return out[:num_frames]
    pad = [(0, num_frames - out.shape[0])] + [(0, 0)] * (out.ndim - 1)
    return np.pad(out, pad, mode="edge")


def intervals_to_frames(intervals: Sequence[Tuple[int, int]], num_frames: int) -> np.ndarray:
    """Binary frame labels from anomalous [start, end) frame intervals."""
    gt = np.zeros(num_frames, dtype=np.float32)
    for s, e in intervals:
        gt[max(0, int(s)):max(0, min(num_frames, int(e)))] = 1.0
    return gt


def _safe(fn, y, s) -> float:
    y = np.asarray(y)
    if y.size == 0 or y.min() == y.max():
        return float("nan")  # undefined with a single class present
    return float(fn(y, s))


def frame_metrics(frame_scores: Sequence[np.ndarray], frame_gt: Sequence[np.ndarray]) -> Dict[str, float]:
    """Per-video frame scores and binary gt → AUC, AP over all frames and AUC/AP over
    the frames of abnormal videos only (videos with any anomalous frame)."""
    if len(frame_scores) != len(frame_gt):
        raise ValueError(f"{len(frame_scores)} score arrays for {len(frame_gt)} ground-truth arrays")
    for i, (s, g) in enumerate(zip(frame_scores, frame_gt)):
        if len(s) != len(g):
            raise ValueError(f"video {i}: {len(s)} frame scores but {len(g)} ground-truth frames")
    scores = np.concatenate([np.asarray(s, np.float64) for s in frame_scores]) if frame_scores else np.zeros(0)
    gt = np.concatenate([np.asarray(g) for g in frame_gt]) if frame_gt else np.zeros(0)
    ab = [i for i, g in enumerate(frame_gt) if np.any(np.asarray(g) > 0)]
    ab_s = np.concatenate([frame_scores[i] for i in ab]) if ab else np.zeros(0)
    ab_g = np.concatenate([frame_gt[i] for i in ab]) if ab else np.zeros(0)
    return {
        "auc": _safe(roc_auc_score, gt, scores),
        "ap": _safe(average_precision_score, gt, scores),
        "auc_abnormal": _safe(roc_auc_score, ab_g, ab_s),
        "ap_abnormal": _safe(average_precision_score, ab_g, ab_s),
    }


# ------------------------------------------------------------------------ detection mAP
def _nms(segs: np.ndarray, thresh: float) -> List[int]:
    """Greedy 1-D NMS over [start, end] rows already sorted by score (official)."""
    order = np.arange(len(segs))
    x1, x2 = segs[:, 0], segs[:, 1]
    lengths = x2 - x1
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        inter = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]))
        iou = inter / (lengths[i] + lengths[order[1:]] - inter)
        order = order[np.where(iou <= thresh)[0] + 1]
    return keep


def _proposals(pred: np.ndarray, c: int, c_score: float, thr: float = 0.6, min_len: int = 2,
               nms_thresh: float = 0.6) -> List[Tuple[int, int, float]]:
    """Threshold one class curve at max - (max-min)*thr; runs of >= min_len frames
    become proposals scored max + 0.7 * video class score; NMS at 0.6."""
    tmp = pred[:, c]
    threshold = tmp.max() - (tmp.max() - tmp.min()) * thr
    on = np.concatenate([[0], (tmp > threshold).astype(np.int8), [0]])
    diff = np.diff(on)
    starts, ends = np.where(diff == 1)[0], np.where(diff == -1)[0]
    props = [(int(s), int(e), float(tmp[s:e].max() + 0.7 * c_score))
             for s, e in zip(starts, ends) if e - s >= min_len]
    if not props:
        return []
    props.sort(key=lambda p: -p[2])
    keep = _nms(np.array([[p[0], p[1]] for p in props], np.float64), nms_thresh)
    return [props[k] for k in keep]


def _iou_frames(a: Tuple[int, int], b: Tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def detection_map(predictions: Sequence[np.ndarray], gt_segments: Sequence[Sequence[Tuple[int, int]]],
                  gt_labels: Sequence[Sequence[int]], iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
                  ) -> Tuple[List[float], float]:
    """Fine-grained detection mAP (a fraction in [0, 1], like AUC and AP; the official
    script prints percent) per IoU threshold and their mean.

    predictions: per video, frame-level class probabilities [F, C] (A-branch softmax
    repeated ×16); gt_segments/gt_labels: per video, [start, end) frame segments and
    their class indices (a normal video carries one segment [0, F) of class 0, as the
    official ground truth does).  Differences from the official script: a class with
    no proposal scores AP 0 instead of zeroing the whole mAP, and a video shorter than
    16 frames uses its top-1 frame for the video class score."""
    if len(predictions) != len(gt_segments) or len(gt_segments) != len(gt_labels):
        raise ValueError("predictions, gt_segments and gt_labels must have one entry per video")
    if not predictions:
        raise ValueError("no videos to evaluate")
    num_classes = predictions[0].shape[1]
    c_scores = []
    for p in predictions:
        k = max(1, p.shape[0] // 16)
        c_scores.append(-np.sort(-p, axis=0)[:k].mean(0))
    props_by_class = []
    for c in range(num_classes):
        props = []
        for i, p in enumerate(predictions):
            props.extend((i, s, e, sc) for s, e, sc in _proposals(p, c, float(c_scores[i][c])))
        props.sort(key=lambda r: -r[3])
        props_by_class.append(props)

    maps = []
    for th in iou_thresholds:
        aps = []
        for c in range(num_classes):
            gts = [(i, int(s), int(e)) for i in range(len(gt_segments))
                   for (s, e), l in zip(gt_segments[i], gt_labels[i]) if int(l) == c]
            gtpos = len(gts)
            tp = []
            for vid, s, e, _ in props_by_class[c]:
                best, best_j = 0.0, -1
                for j, (gv, gs, ge) in enumerate(gts):
                    if gv == vid:
                        iou = _iou_frames((gs, ge), (s, e))
                        if iou >= th and iou > best:
                            best, best_j = iou, j
                if best_j >= 0:
                    del gts[best_j]
                tp.append(1.0 if best_j >= 0 else 0.0)
            tp = np.asarray(tp)
            if tp.sum() == 0 or gtpos == 0:
                aps.append(0.0)
            else:
                prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
                aps.append(float(np.sum(prec * tp) / gtpos))
        maps.append(float(np.mean(aps)))
    return maps, float(np.mean(maps))
