"""Framework-free training steps: the batches of an epoch, their collation, one
optimisation step (used directly in tests and inside the Ray Train workers of
:mod:`vadclip.train_job`).  Evaluation lives in :mod:`vadclip.evaluation`."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from .config import VadConfig
from .features import process_train, row_features
from .losses import vadclip_loss


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
