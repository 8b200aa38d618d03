"""Framework-free training and evaluation steps (used directly in tests and inside
the Ray Train workers of :mod:`vadclip.train_job`)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from .config import VadConfig
from .features import process_train, row_features
from .gt import Intervals
from .losses import vadclip_loss
from .metrics import detection_map, expand_snippets, frame_metrics, intervals_to_frames
from .model import VadCLIP, score_video


def collate(rows: Sequence[Dict], cfg: VadConfig) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training batch: features [B, L, D] (pooled or padded), lengths [B], labels [B, C]."""
    feats, lengths, labels = [], [], []
    for r in rows:
        f, n = process_train(row_features(r), cfg.visual_length)
        feats.append(f)
        lengths.append(n)
        labels.append(cfg.label_vector(r["label"]))
    return (torch.from_numpy(np.stack(feats)), torch.tensor(lengths, dtype=torch.long),
            torch.from_numpy(np.stack(labels)))


def batch_plan(labels: Sequence[str], cfg: VadConfig, epoch_seed: int) -> List[List[int]]:
    """Indices of each batch for one epoch.  Balanced (UCF): ``batch_size`` normal +
    ``batch_size`` abnormal per batch, as many batches as the smaller side fills
    (at least one); mixed (XD): shuffled batches of ``batch_size``."""
    rng = np.random.default_rng(epoch_seed)
    idx = np.arange(len(labels))
    if cfg.balanced_batches:
        normal = rng.permutation([i for i in idx if cfg.is_normal(labels[i])])
        abnormal = rng.permutation([i for i in idx if not cfg.is_normal(labels[i])])
        if len(normal) == 0 or len(abnormal) == 0:
            raise ValueError(f"balanced batches need normal and abnormal videos "
                             f"(got {len(normal)} normal, {len(abnormal)} abnormal)")
        bs = min(cfg.batch_size, len(normal), len(abnormal))
        n = min(len(normal), len(abnormal)) // bs
        return [list(normal[k * bs:(k + 1) * bs]) + list(abnormal[k * bs:(k + 1) * bs]) for k in range(n)]
    perm = rng.permutation(idx)
    return [list(perm[k:k + cfg.batch_size]) for k in range(0, len(perm), cfg.batch_size)]


def train_step(model, optimizer, batch, cfg: VadConfig, device: str = "cpu") -> Dict[str, float]:
    x, lengths, labels = (t.to(device) for t in batch)
    model.train()
    out = model(x, lengths)
    loss, parts = vadclip_loss(out, labels, lengths, cfg.contrast_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return parts


def make_optimizer(model: torch.nn.Module, cfg: VadConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, cfg.lr_gamma)
    return opt, sched


def video_gt(row: Dict, gt: Intervals, cfg: VadConfig) -> Tuple[np.ndarray, List[Tuple[int, int]], List[int]]:
    """Frame labels, mAP segments and segment classes of one evaluation video."""
    n = int(row["num_frames"]) or int(row["snippet_count"]) * cfg.snippet_len
    ivs = gt.get(row["video_id"], [])
    frames = intervals_to_frames([(s, e) for s, e, _ in ivs], n)
    if not ivs:   # a normal video: one class-0 segment, or none (official UCF-Crime)
        return (frames, [(0, n)], [0]) if cfg.map_normal_segments else (frames, [], [])
    vec = cfg.label_vector(row["label"]) if row.get("label") else None
    default_cls = int(np.argmax(vec[1:]) + 1) if vec is not None and vec[1:].any() else 1
    classes = []
    for _, _, lab in ivs:
        classes.append(int(np.argmax(cfg.label_vector(lab)[1:]) + 1) if lab else default_cls)
    return frames, [(s, e) for s, e, _ in ivs], classes


@torch.no_grad()
def evaluate(model: VadCLIP, rows: Sequence[Dict], gt: Intervals, cfg: VadConfig,
             device: str = "cpu", with_map: bool = True) -> Dict[str, float]:
    """Frame-level AUC/AP (C-branch), abnormal-only AUC, A-branch AUC/AP and mAP@IoU."""
    s_c, s_a, gts, preds, segs, labs = [], [], [], [], [], []
    for r in rows:
        anomaly, probs = score_video(model, row_features(r), device)
        frames, seg, lab = video_gt(r, gt, cfg)
        n = len(frames)
        s_c.append(expand_snippets(anomaly, n, cfg.snippet_len))
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
