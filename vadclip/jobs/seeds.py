"""Many seeds at once: ``vadclip train … --seeds 0,1,2,3,4`` (or ``--repeats N``).

Each seed is an ordinary training (:func:`vadclip.jobs.train.run_train`, its own Ray Train
``TorchTrainer``, checkpoints and resume under ``RUN_NAME-seedS``), launched from a Ray task
on the driver's node so that several train at the same time; how many at once is what the
cluster holds (each trainer's workers, one CPU left to Ray Data), or ``--max-concurrent``.
MLflow gets one parent run (``RUN_NAME``) with a child run per seed; the parent holds the
mean, standard deviation (sample, n−1), minimum and maximum of every evaluation metric at
each seed's selected evaluation, and a figure of all seeds' curves.  The best seed by the
selection metric is registered (the alias moves as for one training); the others stay runs.
Re-running the same command resumes every unfinished seed and retrains no finished one."""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vadclip.errors import InputError

# what best_metrics holds besides the evaluation: the epoch's training bookkeeping
NOT_EVALUATION = ("loss", "lr", "epoch", "epoch_time_s", "steps", "score", "samples")


def parse_seeds(seeds: Optional[str], repeats: Optional[int], base: int) -> List[int]:
    """``--seeds 0,1,2`` → [0, 1, 2]; ``--repeats N`` → N seeds from the config's seed on."""
    if seeds and repeats:
        raise InputError("give --seeds or --repeats, not both")
    if repeats is not None:
        if repeats < 1:
            raise InputError(f"--repeats {repeats}: at least 1")
        return list(range(base, base + repeats))
    try:
        out = [int(s) for s in str(seeds).replace(" ", "").split(",") if s != ""]
    except ValueError:
        raise InputError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not out:
        raise InputError("--seeds: no seed given")
    if len(set(out)) != len(out):
        raise InputError(f"--seeds {seeds}: a seed is repeated")
    return out


def is_evaluation_metric(key: str) -> bool:
    return not (key in NOT_EVALUATION or key.startswith(("loss", "worker_peak_")))


def aggregate(per_seed: Sequence[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Mean, sample standard deviation (0 for one seed), min and max over the seeds of
    every evaluation metric they all report with a finite value."""
    keys = sorted({k for m in per_seed for k in m if is_evaluation_metric(k)})
    out = {}
    for k in keys:
        vals = [m.get(k) for m in per_seed]
        if any(v is None or not isinstance(v, (int, float)) or not math.isfinite(v) for v in vals):
            continue
        a = np.asarray(vals, np.float64)
        out[k] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                  "min": float(a.min()), "max": float(a.max()), "n": len(a)}
    return out


def concurrency(num_workers: int, cpus_per_worker: float, use_gpu: bool, n_seeds: int) -> int:
    """How many trainers the cluster holds at once: by GPUs (each worker one), else by
    CPUs with one left to Ray Data (a trainer whose data tasks get no CPU never ends)."""
    import ray

    res = ray.cluster_resources()
    if use_gpu:
        fit = int(res.get("GPU", 0) // max(1, num_workers))
    else:
        fit = int((res.get("CPU", 1) - 1) // max(1e-9, num_workers * cpus_per_worker))
    return max(1, min(n_seeds, fit))


def _train_seed(train_path: str, cfg_dict: Dict[str, Any], eval_path: Optional[str], gt_path: Optional[str],
                opts, seed: int, quiet: bool) -> Dict[str, Any]:
    """One seed's training, in a Ray task (its trainer's workers reserve their own resources)."""
    from vadclip.jobs.train import run_train
    from vadclip.model.config import VadConfig

    def log(msg: str) -> None:
        if not quiet:
            print(f"[seed {seed}] {msg}", file=sys.stderr, flush=True)

    cfg = VadConfig.from_dict(cfg_dict).replace(seed=seed)
    return dict(run_train(train_path, cfg, eval_path=eval_path, gt_path=gt_path, opts=opts, log=log), seed=seed)


def run_seeds(train_path: str, cfg, eval_path: Optional[str], gt_path: Optional[str], o, log) -> Dict[str, Any]:
    """Train one model per seed of ``o.seeds``/``o.repeats`` concurrently; returns the
    per-seed results, the aggregate, the best seed and its registration."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from vadclip.io import storage
    from vadclip.jobs.cluster import ensure_ray
    from vadclip.jobs.train import check_inputs
    from vadclip.tracking.registry import log_and_register
    from vadclip.tracking.runs import TrainingRun, log_seed_summary, metric_histories
    from vadclip.train.recipes import get_recipe

    seeds = parse_seeds(o.seeds, o.repeats, cfg.seed)
    train_path, eval_path, gt_path = map(storage.absolute, (train_path, eval_path, gt_path))
    o = dataclasses.replace(o, storage=storage.absolute(o.storage))
    metric = o.metric or get_recipe(o.recipe).default_metric(cfg.preset)
    check_inputs(train_path, cfg, eval_path, gt_path, o.eval_crop, o.allow_feature_mismatch, log)  # fail before Ray
    ensure_ray(o.address)
    at_once = o.max_concurrent or concurrency(o.num_workers, o.cpus_per_worker, o.use_gpu, len(seeds))
    parent = TrainingRun(o.experiment, o.tracking_uri, o.run_name, storage.join(o.storage, o.run_name) + "#seeds")
    parent.log_start({"seeds": seeds, "metric": metric, "num_workers": o.num_workers, "recipe": o.recipe,
                      "preset": cfg.preset}, {"vadclip.seeds": ",".join(map(str, seeds)),
                                              "vadclip.max_concurrent": str(at_once)}, [])
    log(f"[train] {len(seeds)} seeds ({', '.join(map(str, seeds))}), {at_once} at a time; MLflow parent run "
        f"{parent.run_id}")
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(_train_seed).options(num_cpus=0, scheduling_strategy=here, max_retries=0)
    one = dataclasses.replace(o, seeds=None, repeats=None, register_name=None, mlflow_parent_run_id=parent.run_id)
    results: Dict[int, Dict[str, Any]] = {}
    failed: Dict[int, str] = {}
    pending: Dict[Any, int] = {}
    queue = list(seeds)
    cfg_dict = cfg.to_dict()
    try:
        while queue or pending:
            while queue and len(pending) < at_once:
                s = queue.pop(0)
                pending[task.remote(train_path, cfg_dict, eval_path, gt_path,
                                    dataclasses.replace(one, run_name=f"{o.run_name}-seed{s}"), s, False)] = s
            done, _ = ray.wait(list(pending), num_returns=1)
            s = pending.pop(done[0])
            try:
                results[s] = ray.get(done[0])
                m = results[s]["best_metrics"]
                log(f"[train] seed {s}: best {metric} {m.get(metric, float('nan')):.4f} at epoch {m.get('epoch')}")
            except Exception as e:   # the others go on; the job fails at the end, a re-run resumes
                failed[s] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
                log(f"[train] seed {s} FAILED: {failed[s]}")
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(seeds)} seeds failed ({'; '.join(f'seed {s}: {m}' for s, m in failed.items())}); "
                               "run the same command again to resume them")
        per_seed = [results[s] for s in seeds]
        agg = aggregate([r["best_metrics"] for r in per_seed])

        def selection(r):
            v = r["best_metrics"].get(metric, r["best_metrics"].get("score"))
            return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf

        best = max(per_seed, key=selection)
        histories = metric_histories({r["seed"]: r["mlflow_run_id"] for r in per_seed}, o.tracking_uri,
                                     [metric, "loss"])
        from vadclip.report.html import plot_seed_curves

        fig = plot_seed_curves(histories, [metric, "loss"], best=best["seed"])
        try:
            log_seed_summary(parent.run_id, parent.tracking_uri, agg, best["seed"], best["mlflow_run_id"], fig,
                             {s: r["best_metrics"] for s, r in results.items()})
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)
        summary: Dict[str, Any] = {
            "seeds": seeds, "metric": metric, "max_concurrent": at_once,
            "per_seed": [{"seed": r["seed"], "best_metrics": r["best_metrics"], "best_checkpoint": r["best_checkpoint"],
                          "mlflow_run_id": r["mlflow_run_id"]} for r in per_seed],
            "aggregate": agg, "best_seed": best["seed"], "best_checkpoint": best["best_checkpoint"],
            "best_metrics": best["best_metrics"], "mlflow_parent_run_id": parent.run_id,
            "tracking_uri": parent.tracking_uri}
        summary.update(log_and_register(best["best_checkpoint"], best["mlflow_run_id"], parent.tracking_uri,
                                        o.register_name, o.alias, metric, selection(best),
                                        best_epoch=best["best_metrics"].get("epoch"), log=log))
    except BaseException:
        parent.end(ok=False)
        raise
    parent.end(ok=True)
    if metric in agg:
        a = agg[metric]
        log(f"[train] {metric} over {len(seeds)} seeds: {a['mean']:.4f} ± {a['std']:.4f} "
            f"(min {a['min']:.4f}, max {a['max']:.4f}); best seed {best['seed']}")
    return summary
