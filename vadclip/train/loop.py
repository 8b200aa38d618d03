"""The epoch loop of one training rank, free of any framework: batches from the rank's
shard cache (:class:`vadclip.train.batches.ShardCache`), steps, evaluation points as the
recipe says (:mod:`vadclip.train.recipes`), the best model so far.  The ranks agree
through :class:`Ranks` (``torch.distributed`` when a process group runs; a single
process otherwise).  Ray Train drives it in :mod:`vadclip.jobs.train`; reporting
(checkpoints, MLflow) is the caller's, through the ``on_eval`` callback and the
metrics :meth:`EpochLoop.epoch` returns."""
from __future__ import annotations

import copy
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from vadclip.model.config import VadConfig
from vadclip.train.batches import batch_plan, train_step
from vadclip.train.recipes import Recipe


class Ranks:
    """This rank and how the ranks agree: min/max of a number, rank 0's decision."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @staticmethod
    def _grouped() -> bool:
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def reduce(self, value: float, op: str) -> float:
        """``value`` reduced over the ranks (``"min"``/``"max"``)."""
        if not self._grouped():
            return value
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
        return float(t.item())

    def rank0_says(self, flag: bool) -> bool:
        if not self._grouped():
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0])
        dist.broadcast(t, src=0)
        return bool(t.item())


class MemoryWatch:
    """Peak memory of this process, in MiB: ``rss`` (``ru_maxrss``) and, sampled every
    50 ms from ``/proc/self/status``, ``private`` (anonymous memory: tensors, batches,
    the model) and ``shared`` (object-store pages the process has read; they belong to
    the node's object store, whose size Ray caps, not to the process)."""

    def __init__(self, every: float = 0.05):
        self.peak = {"private": 0.0, "shared": 0.0}
        self._stop = threading.Event()
        if os.path.exists("/proc/self/status"):
            threading.Thread(target=self._run, args=(every,), daemon=True).start()

    def _sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                key = {"RssAnon:": "private", "RssShmem:": "shared"}.get(line.split(":")[0] + ":")
                if key:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]) / 1024.0)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self._sample()

    def read(self) -> Dict[str, float]:
        import resource

        if os.path.exists("/proc/self/status"):
            self._sample()
        return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, **self.peak}

    def stop(self) -> None:
        self._stop.set()


@dataclass
class LoopState:
    """What a resumed rank needs beside the model, optimizer and scheduler."""
    start_epoch: int = 0
    best: float = -math.inf
    history: List[Dict[str, float]] = field(default_factory=list)
    best_state: Optional[Dict[str, Any]] = None     # the best model so far (recipes that reload it)


class EpochLoop:
    """One rank's training: ``model`` (maybe DDP-wrapped; ``core`` is the model itself),
    its optimizer and scheduler, the recipe and the selection metric.  Rank 0 holds the
    evaluation rows and ground truth."""

    def __init__(self, model, core, opt, sched, cfg: VadConfig, recipe: Recipe, metric: str, ranks: Ranks,
                 device, per_rank: int, eval_rows=None, gt=None, eval_every: Optional[int] = None,
                 micro_batch: Optional[int] = None,
                 log: Callable[[str], None] = lambda _: None, memory: Optional[MemoryWatch] = None,
                 on_eval: Optional[Callable[[Dict[str, Any], int], None]] = None):
        self.model, self.core, self.opt, self.sched, self.cfg = model, core, opt, sched, cfg
        self.recipe, self.metric, self.ranks, self.device = recipe, metric, ranks, device
        self.per_rank, self.eval_rows, self.gt, self.micro_batch = per_rank, eval_rows, gt or {}, micro_batch
        self.global_batch = per_rank * ranks.world * (2 if cfg.balanced_batches else 1)
        self.eval_every = eval_every     # evaluate within epochs every this many samples (None: at epoch ends)
        self.log, self.memory, self.on_eval = log, memory, on_eval
        self.state = LoopState()

    # -------------------------------------------------------------- resume state
    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.core.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "best": self.state.best, "history": self.state.history,
                "best_model": self.state.best_state}

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        """Before DDP wraps the model (``core`` is loaded; the wrapper shares its tensors)."""
        self.core.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.state = LoopState(st["epoch"] + 1, st["best"], st["history"], st.get("best_model"))

    # --------------------------------------------------------------------- steps
    def steps(self, labels, cap: Optional[int] = None) -> int:
        """Batches per epoch: what the smallest rank's shard fills, the same on every rank."""
        try:
            mine = len(batch_plan(labels, self.cfg, 0, self.per_rank))
        except ValueError as exc:
            raise RuntimeError(f"worker {self.ranks.rank}: {exc}; use fewer workers") from None
        steps = int(self.ranks.reduce(mine, "min"))
        return min(steps, int(cap)) if cap else steps

    def eval_point(self, metrics: Dict[str, Any]) -> bool:
        """Rank 0 evaluates; every rank learns whether this is the best model so far and,
        if the recipe reloads it, keeps a copy (DDP keeps the ranks' weights identical)."""
        from vadclip.metrics.evaluate import evaluate

        if self.ranks.rank == 0:
            if self.eval_rows:
                metrics.update(evaluate(self.core, self.eval_rows, self.gt, self.cfg, str(self.device)))
            score = metrics.get(self.metric, float("nan"))
            if score is None or not np.isfinite(score):
                score = -metrics.get("loss", float("inf"))
            metrics["score"] = float(score)
        is_best = self.ranks.rank0_says(self.ranks.rank == 0 and metrics["score"] > self.state.best)
        if is_best:
            if self.ranks.rank == 0:
                self.state.best = metrics["score"]
            if self.recipe.reload_best:
                self.state.best_state = copy.deepcopy(self.core.state_dict())
        return is_best

    def _step_eval(self, epoch: int, i: int, steps: int) -> None:
        """An evaluation point within the epoch (the official UCF loop: every N samples)."""
        m: Dict[str, Any] = {}
        is_best = self.eval_point(m)
        if self.ranks.rank == 0:   # reported at "samples seen"; the best model so far is kept in memory
            if self.on_eval:
                self.on_eval({f"step_{k}": v for k, v in m.items()}, (epoch * steps + i) * self.global_batch)
            self.log(f"[train] epoch {epoch + 1} step {i}: {self.metric} "
                     f"{m.get(self.metric, float('nan')):.4f}{' (best)' if is_best else ''}")

    def epoch(self, shard, epoch: int, steps: int) -> Dict[str, Any]:
        """One epoch over the rank's shard; returns its metrics (loss terms, lr, time,
        peak memory over the ranks, and the evaluation's where it evaluated)."""
        t0 = time.time()
        plan = batch_plan(shard.labels, self.cfg, self.cfg.seed * 1000 + epoch * 17 + self.ranks.rank,
                          self.per_rank, steps)
        sums: Dict[str, float] = {}
        for i, b in enumerate(plan):
            for k, v in train_step(self.model, self.opt, shard.batch(b), self.cfg, self.device,
                                   self.micro_batch).items():
                sums[k] = sums.get(k, 0.0) + v
            if self.eval_every and i and (i * self.global_batch) % self.eval_every == 0:
                self._step_eval(epoch, i, steps)
        self.sched.step()
        metrics: Dict[str, Any] = {k: v / max(1, len(plan)) for k, v in sums.items()}
        metrics.update(epoch=epoch + 1, lr=self.opt.param_groups[0]["lr"], epoch_time_s=time.time() - t0,
                       steps=len(plan))
        if self.memory is not None:
            metrics.update({f"worker_peak_{k}_mb": self.ranks.reduce(v, "max")
                            for k, v in sorted(self.memory.read().items())})
        is_best = False if self.eval_every else self.eval_point(metrics)
        if self.recipe.reload_best and self.state.best_state is not None:
            self.core.load_state_dict(self.state.best_state)    # the official loops go on from the best model
            metrics["score"] = self.state.best
        metrics.setdefault("score", self.state.best)
        if self.ranks.rank == 0:
            self.state.history.append({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            self.log(f"[train] epoch {epoch + 1}/{self.cfg.epochs} loss {metrics['loss']:.4f} "
                     f"{self.metric} {metrics.get(self.metric, float('nan')):.4f}{' (best)' if is_best else ''}")
        return metrics
