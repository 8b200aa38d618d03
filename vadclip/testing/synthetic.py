"""Synthetic CLIP-like feature sets with planted anomalies (tests, benchmarks)."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from vadclip.model.config import VadConfig
from vadclip.io.features import feature_row


def make_feature_set(cfg: VadConfig, n_normal: int, n_abnormal: int, dim: int, t_range=(20, 120),
                     strength: float = 3.0, seed: int = 0, prefix: str = "vid",
                     snippet_len: int = 16) -> Tuple[List[Dict], List[Dict]]:
    """Feature rows and ground-truth frame intervals.  Abnormal videos of class c get
    ``strength`` × a class direction added on a random run of snippets."""
    rng = np.random.default_rng(seed)
    dirs = np.random.default_rng(12345).normal(size=(cfg.num_classes, dim)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    base = np.random.default_rng(54321).normal(size=dim).astype(np.float32)
    rows, gt = [], []
    for i in range(n_normal + n_abnormal):
        t = int(rng.integers(t_range[0], t_range[1] + 1))
        x = base[None] + 0.3 * rng.normal(size=(t, dim)).astype(np.float32)
        abnormal = i >= n_normal
        if abnormal:
            c = 1 + int(rng.integers(0, cfg.num_classes - 1))
            ln = int(rng.integers(max(2, t // 6), max(3, t // 3) + 1))
            s = int(rng.integers(0, t - ln + 1))
            x[s:s + ln] += strength * dirs[c]
            label = cfg.class_keys[c]
            gt.append({"video_id": f"{prefix}{i:04d}", "start_frame": s * snippet_len,
                       "end_frame": (s + ln) * snippet_len, "label": label})
        else:
            label = cfg.class_keys[0]
        rows.append(feature_row(f"{prefix}{i:04d}", f"synthetic://{prefix}{i:04d}", label, 0, 30.0,
                                t * snippet_len, x))
    return rows, gt
