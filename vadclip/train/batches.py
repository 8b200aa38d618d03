"""Framework-free training steps: the per-row training view, the batches of an epoch,
a worker's shard kept on node-local disk, one optimisation step.  Used directly in
tests and inside the Ray Train workers of :mod:`vadclip.jobs.train`; evaluation lives
in :mod:`vadclip.metrics.evaluate`."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from vadclip.model.config import VadConfig
from vadclip.io.features import process_train, row_features
from vadclip.model.losses import vadclip_loss


def prepare_row(row: Dict, cfg: VadConfig) -> Tuple[np.ndarray, int, np.ndarray]:
    """A feature row in the training view: features [visual_length, D] (pooled or
    zero-padded), true length, multi-hot label [C]."""
    f, n = process_train(row_features(row), cfg.visual_length)
    return f, n, cfg.label_vector(row["label"])


def prepare_batch(batch: Dict[str, Sequence], cfg: VadConfig) -> Dict[str, np.ndarray]:
    """:func:`prepare_row` over a column batch (a Ray Data ``map_batches`` function):
    ``x`` [B, L, D], ``length`` [B], ``y`` [B, C] and the ``label`` strings."""
    xs, ns, ys = [], [], []
    for i in range(len(batch["video_id"])):
        row = {k: batch[k][i] for k in ("video_id", "features", "snippet_count", "feature_dim", "label")}
        x, n, y = prepare_row(row, cfg)
        xs.append(x), ns.append(n), ys.append(y)
    crops = batch["crop"] if "crop" in batch else [0] * len(batch["video_id"])
    return {"x": np.stack(xs), "length": np.asarray(ns, np.int64), "y": np.stack(ys),
            "label": np.asarray([str(v) for v in batch["label"]], dtype=object),
            "key": np.asarray([f"{v}\x00{int(c)}" for v, c in zip(batch["video_id"], crops)], dtype=object)}


def deal(videos: Sequence[Tuple[str, str]], cfg: VadConfig, ranks: int, seed: int) -> List[List[str]]:
    """Which videos each training rank gets: ``videos`` = (video_id, label) pairs (one
    per video), shuffled with ``seed`` and dealt round-robin, normal and abnormal videos
    separately, so that every rank holds the same share of each (balanced batches need
    both on every rank) and the split depends on the seed alone, never on the order in
    which a cluster happens to deliver the rows."""
    rng = np.random.default_rng(seed)
    ids = sorted(set(videos))
    out: List[List[str]] = [[] for _ in range(ranks)]
    for side in (True, False):
        group = [v for v, lab in ids if bool(cfg.is_normal(lab)) == side]
        for k, i in enumerate(rng.permutation(len(group))):
            out[k % ranks].append(group[int(i)])
    return out


def batch_plan(labels: Sequence[str], cfg: VadConfig, epoch_seed: int, batch_size: Optional[int] = None,
               steps: Optional[int] = None) -> List[List[int]]:
    """Indices of each batch for one epoch; every video at most once per epoch, as in
    the official loaders.  Balanced (UCF): ``batch_size`` normal + ``batch_size``
    abnormal per batch, as many batches as the smaller side fills (at least one);
    mixed (XD): shuffled batches of ``batch_size``, the last one partial.
    ``batch_size`` defaults to the config's (a DDP rank passes its share), ``steps``
    cuts the epoch to that many batches (every rank runs the same number)."""
    rng = np.random.default_rng(epoch_seed)
    idx = np.arange(len(labels))
    bs = int(batch_size or cfg.batch_size)
    if cfg.balanced_batches:
        normal = rng.permutation([i for i in idx if cfg.is_normal(labels[i])])
        abnormal = rng.permutation([i for i in idx if not cfg.is_normal(labels[i])])
        if len(normal) == 0 or len(abnormal) == 0:
            raise ValueError(f"balanced batches need normal and abnormal videos "
                             f"(got {len(normal)} normal, {len(abnormal)} abnormal)")
        bs = min(bs, len(normal), len(abnormal))
        n = min(len(normal), len(abnormal)) // bs
        plan = [[int(i) for i in normal[k * bs:(k + 1) * bs]] + [int(i) for i in abnormal[k * bs:(k + 1) * bs]]
                for k in range(n)]
    else:
        perm = rng.permutation(idx)
        plan = [[int(i) for i in perm[k:k + bs]] for k in range(0, len(perm), bs)]
    return plan if steps is None else plan[:steps]


class ShardCache:
    """A worker's training rows in the training view, as fixed-size float32 records
    [visual_length, D] in one file on node-local disk.  Rows are appended once as they
    stream in and read back by index one batch at a time, so a worker's memory holds a
    batch, not its shard (UCF-Crime with 10 crops is about 8 GB of features)."""

    def __init__(self, directory: Optional[str] = None, prefix: str = "vadclip-shard-"):
        root = directory or os.environ.get("VADCLIP_SCRATCH") or tempfile.gettempdir()
        os.makedirs(root, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=prefix, dir=root)
        self._file = open(os.path.join(self.dir, "x.f32"), "w+b")
        self.shape: Optional[Tuple[int, int]] = None
        self.lengths: List[int] = []
        self.labels: List[str] = []
        self._y: List[np.ndarray] = []
        self.keys: List[str] = []
        self._order: Optional[np.ndarray] = None     # logical index → record in the file (see freeze)
        self._unflushed = False

    def __len__(self) -> int:
        return len(self.lengths)

    def append(self, x: np.ndarray, lengths: Iterable[int], y: np.ndarray, labels: Iterable[str],
               keys: Optional[Iterable[str]] = None) -> None:
        if self._order is not None:
            raise RuntimeError("ShardCache: rows appended after freeze()")
        x = np.ascontiguousarray(x, np.float32)
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"training rows of shape {x.shape[1:]} after rows of shape {self.shape}")
        self._file.seek(0, os.SEEK_END)
        self._file.write(memoryview(x).cast("B"))
        self._unflushed = True
        self.lengths.extend(int(n) for n in lengths)
        self._y.extend(np.asarray(y, np.float32))
        self.labels.extend(str(v) for v in labels)
        self.keys.extend(str(k) for k in keys) if keys is not None else \
            self.keys.extend(str(len(self.keys) + i) for i in range(len(x)))

    def freeze(self) -> None:
        """Put the rows in the order of their keys (video id and crop), whatever order
        they streamed in: batch plans index this order, so a seed gives the same batches
        on every run."""
        order = np.asarray(sorted(range(len(self.keys)), key=self.keys.__getitem__), np.int64)
        self.lengths = [self.lengths[i] for i in order]
        self._y = [self._y[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.keys = [self.keys[i] for i in order]
        self._order = order

    def batch(self, idx: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features [B, L, D], lengths [B], labels [B, C]) of rows ``idx``."""
        if self._unflushed:   # rows appended since the last read: to the file before preadv
            self._file.flush()
            self._unflushed = False
        out = np.empty((len(idx), *self.shape), np.float32)
        size = out[0].nbytes
        for j, i in enumerate(idx):
            rec = int(self._order[i]) if self._order is not None else int(i)
            got = os.preadv(self._file.fileno(), [memoryview(out[j]).cast("B")], rec * size)
            if got != size:
                raise IOError(f"{self.dir}: short read of row {i} ({got} of {size} bytes)")
        return (torch.from_numpy(out), torch.tensor([self.lengths[i] for i in idx], dtype=torch.long),
                torch.from_numpy(np.stack([self._y[i] for i in idx])))

    def close(self) -> None:
        self._file.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "ShardCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def train_step(model, optimizer, batch, cfg: VadConfig, device: str = "cpu",
               micro_batch: Optional[int] = None) -> Dict[str, float]:
    """One optimisation step on ``batch``.  ``micro_batch`` runs the forward and backward
    passes on that many rows at a time and accumulates the gradients, weighted by rows
    (every loss term is a mean over videos, the contrast term depends on no video): the
    same step in less activation memory; under DDP only the last pass all-reduces."""
    import contextlib

    x, lengths, labels = batch
    b = len(x)
    size = min(b, int(micro_batch or b))
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums: Dict[str, float] = {}
    for lo in range(0, b, size):
        hi = min(lo + size, b)
        quiet = model.no_sync() if hi < b and hasattr(model, "no_sync") else contextlib.nullcontext()
        with quiet:
            n = lengths[lo:hi].to(device)
            out = model(x[lo:hi].to(device), n)
            loss, parts = vadclip_loss(out, labels[lo:hi].to(device), n, cfg.contrast_weight)
            (loss * ((hi - lo) / b)).backward()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * (hi - lo) / b
    optimizer.step()
    return sums


def make_optimizer(model: torch.nn.Module, cfg: VadConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, cfg.lr_gamma)
    return opt, sched
