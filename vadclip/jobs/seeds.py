"""Many seeds at once: ``vadclip train … --seeds 0,1,2,3,4`` (or ``--repeats N``), and
optionally a small grid of configurations (``--grid "lr=1e-5,2e-5;attn_window=8,16"``), each
point with the same seeds and the same report.

Each seed is an ordinary training (:func:`vadclip.jobs.train.run_train`, its own Ray Train
``TorchTrainer``, checkpoints and resume under ``RUN_NAME-seedS``), launched from a Ray task
on the driver's node so that several train at the same time; how many at once is what the
cluster holds (each trainer's workers, one CPU left to Ray Data), or ``--max-concurrent``.
MLflow gets one parent run (``RUN_NAME``) with a child run per seed; the parent holds the
mean, standard deviation (sample, n−1), minimum and maximum of every evaluation metric at
each seed's selected evaluation, and a figure of all seeds' curves.  The best seed by the
selection metric is logged as a model and registered (the alias moves as for one training); the
others stay runs, their checkpoints in storage.
Re-running the same command resumes every unfinished seed and retrains no finished one.
With a grid, a top MLflow run holds one parent run per configuration (its seeds below it)
and each configuration's mean and spread; the configuration with the best mean of the
selection metric over its seeds wins, and its best seed is registered."""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vadclip.errors import InputError
from vadclip.io.storage import redact

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


def parse_grid(text: Optional[str], cfg) -> List[Dict[str, Any]]:
    """``lr=1e-5,2e-5;attn_window=8,16`` → every combination as config overrides
    (``[{}]`` without a grid).  Only scalar fields of the config (numbers, strings,
    booleans) can be gridded; values are read as the field's type."""
    import itertools
    import typing

    from vadclip.model.config import VadConfig

    if not text:
        return [{}]
    hints = typing.get_type_hints(VadConfig)
    scalar = {f.name: hints[f.name] for f in dataclasses.fields(VadConfig) if hints[f.name] in (int, float, str, bool)}
    axes = []
    for part in [p.strip() for p in str(text).split(";") if p.strip()]:
        name, _, values = part.partition("=")
        name = name.strip()
        if name not in scalar:
            raise InputError(f"--grid {part!r}: {name!r} is not a config field that can be gridded "
                             f"(one of {', '.join(sorted(scalar))})")
        tp = scalar[name]
        vals = []
        for v in [v.strip() for v in values.split(",") if v.strip()]:
            try:
                vals.append({"true": True, "false": False}[v.lower()] if tp is bool else tp(v))
            except (KeyError, ValueError):
                raise InputError(f"--grid {part!r}: {v!r} is not a {tp.__name__}") from None
        if not vals:
            raise InputError(f"--grid {part!r}: no values (write NAME=V1,V2)")
        if name in dict(axes):
            raise InputError(f"--grid: {name} given twice")
        axes.append((name, vals))
    combos = [dict(zip([n for n, _ in axes], c)) for c in itertools.product(*[v for _, v in axes])]
    for c in combos:
        cfg.replace(**c)      # a combination the config refuses fails now, in one line
    return combos


def config_label(overrides: Dict[str, Any]) -> str:
    """A name for one grid point, usable in run names and MLflow metric keys."""
    return "_".join(f"{k}{v}" for k, v in overrides.items()).replace("+", "") or "base"


def _start_runs(o, cfg, grid, seeds: List[int], metric: str, at_once: int):
    """The MLflow runs above the seeds' (a grid run with ``--grid``, a parent per
    configuration), started; returns (the grid run or None, the configurations)."""
    from vadclip.io import storage
    from vadclip.tracking.runs import TrainingRun

    top = None
    if o.grid:
        top = TrainingRun(o.experiment, o.tracking_uri, o.run_name, storage.join(o.storage, o.run_name) + "#grid")
        top.log_start({"grid": o.grid, "seeds": seeds, "metric": metric}, {"vadclip.grid": o.grid}, [])
    points = []
    for over in grid:
        name = f"{o.run_name}-{config_label(over)}" if o.grid else o.run_name
        parent = TrainingRun(o.experiment, o.tracking_uri, name, storage.join(o.storage, name) + "#seeds",
                             parent_run_id=top.run_id if top else None)
        parent.log_start({"seeds": seeds, "metric": metric, "num_workers": o.num_workers, "recipe": o.recipe,
                          "preset": cfg.preset, **{f"grid_{k}": v for k, v in over.items()}},
                         {"vadclip.seeds": ",".join(map(str, seeds)), "vadclip.max_concurrent": str(at_once)}, [])
        points.append({"config": over, "name": name, "parent": parent, "cfg": cfg.replace(**over)})
    return top, points


def _train_all(train_path: str, eval_path: Optional[str], gt_path: Optional[str], o, points, seeds: List[int],
               metric: str, at_once: int, log) -> Dict[Any, Dict[str, Any]]:
    """Every (configuration, seed) trained, ``at_once`` at a time, each a Ray task of its
    own on this node; one that fails lets the others finish, then the job fails (a
    re-run resumes).  Returns {(configuration index, seed): result}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from vadclip.tracking.runs import with_credentials

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(_train_seed).options(num_cpus=0, scheduling_strategy=here, max_retries=0)
    results: Dict[Any, Dict[str, Any]] = {}
    failed: Dict[Any, str] = {}
    pending: Dict[Any, Any] = {}
    queue = [(k, s) for k in range(len(points)) for s in seeds]
    while queue or pending:
        while queue and len(pending) < at_once:
            k, s = queue.pop(0)
            pt = points[k]
            one = dataclasses.replace(o, seeds=None, repeats=None, grid=None, register_name=None, log_model=False,
                                      tracking_uri=with_credentials(pt["parent"].tracking_uri),
                                      run_name=f"{pt['name']}-seed{s}", mlflow_parent_run_id=pt["parent"].run_id)
            pending[task.remote(train_path, pt["cfg"].to_dict(), eval_path, gt_path, one, s, False)] = (k, s)
        done, _ = ray.wait(list(pending), num_returns=1)
        k, s = pending.pop(done[0])
        what = f"seed {s}" + (f" of {points[k]['name']}" if o.grid else "")
        try:
            results[(k, s)] = ray.get(done[0])
            m = results[(k, s)]["best_metrics"]
            log(f"[train] {what}: best {metric} {m.get(metric, float('nan')):.4f} at epoch {m.get('epoch')}")
        except Exception as e:   # the others go on; the job fails at the end, a re-run resumes
            failed[(k, s)] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
            log(f"[train] {what} FAILED: {failed[(k, s)]}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(points) * len(seeds)} trainings failed ("
                           + "; ".join(f"seed {s} of {points[k]['name']}: {m}" for (k, s), m in failed.items())
                           + "); run the same command again to resume them")
    return results


def _choose(points, seeds: List[int], metric: str, results, top, o, at_once: int, log):
    """Each configuration's aggregate over its seeds, the best configuration (by the mean
    of the selection metric) and its best seed, registered.  Returns (summary, chosen)."""
    from vadclip.jobs.train import selection_metric
    from vadclip.tracking.registry import log_and_register
    from vadclip.tracking.runs import log_grid_summary

    def selection(r):
        v = selection_metric(r["best_metrics"], metric)[1]
        return v if math.isfinite(v) else -math.inf

    for k, pt in enumerate(points):
        per_seed = [results[(k, s)] for s in seeds]
        pt["aggregate"] = aggregate([r["best_metrics"] for r in per_seed])
        pt["per_seed"] = per_seed
        pt["best"] = max(per_seed, key=selection)
        pt["mean"] = float(np.mean([selection(r) for r in per_seed]))
        _log_point(pt, metric, o.tracking_uri)
    chosen = max(points, key=lambda p: p["mean"])
    best = chosen["best"]
    if top is not None:
        log_grid_summary(top.run_id, top.tracking_uri, metric,
                         [{"label": config_label(p["config"]), "config": p["config"], "aggregate": p["aggregate"],
                           "run_id": p["parent"].run_id} for p in points], config_label(chosen["config"]))
    summary = _point_summary(chosen, seeds, metric)
    summary.update({"max_concurrent": at_once, "tracking_uri": redact(chosen["parent"].tracking_uri)})
    if top is not None:
        summary = {"grid": [dict(_point_summary(p, seeds, metric), config=p["config"]) for p in points],
                   "best_config": chosen["config"], "seeds": seeds, "metric": metric, "max_concurrent": at_once,
                   "best_seed": best["seed"], "best_checkpoint": best["best_checkpoint"],
                   "best_metrics": best["best_metrics"], "mlflow_grid_run_id": top.run_id,
                   "tracking_uri": redact(top.tracking_uri)}
    summary.update(log_and_register(best["best_checkpoint"], best["mlflow_run_id"], chosen["parent"].tracking_uri,
                                    o.register_name, o.alias, selection_metric(best["best_metrics"], metric)[0],
                                    selection(best), best_epoch=best["best_metrics"].get("epoch"), log=log))
    return summary, chosen


def run_seeds(train_path: str, cfg, eval_path: Optional[str], gt_path: Optional[str], o=None, log=None,
              **options: Any) -> Dict[str, Any]:
    """Train one model per seed of ``o.seeds``/``o.repeats`` (and per point of ``o.grid``)
    concurrently (``o``: :class:`TrainOptions`, or its fields as keyword arguments);
    returns per configuration the per-seed results and their aggregate,
    the best configuration (by the mean of the selection metric over its seeds), its
    best seed and that seed's registration."""
    from vadclip.io import storage
    from vadclip.jobs.cluster import ensure_ray
    from vadclip.jobs.train import TrainOptions, check_inputs
    from vadclip.train.recipes import get_recipe

    o = dataclasses.replace(o or TrainOptions(), **options)
    log = log or logging.getLogger("vadclip").info
    seeds = parse_seeds(o.seeds, o.repeats, cfg.seed) if (o.seeds or o.repeats) else [cfg.seed]
    grid = parse_grid(o.grid, cfg)
    train_path, eval_path, gt_path = map(storage.absolute, (train_path, eval_path, gt_path))
    o = dataclasses.replace(o, storage=storage.absolute(o.storage))
    metric = o.metric or get_recipe(o.recipe).default_metric(cfg.preset)
    check_inputs(train_path, cfg, eval_path, gt_path, o.eval_crop, o.allow_feature_mismatch, log)  # fail before Ray
    ensure_ray(o.address)
    n = len(seeds) * len(grid)
    at_once = o.max_concurrent or concurrency(o.num_workers, o.cpus_per_worker, o.use_gpu, n)
    top, points = _start_runs(o, cfg, grid, seeds, metric, at_once)
    log(f"[train] {len(grid)} configuration(s) x {len(seeds)} seeds ({', '.join(map(str, seeds))}), {at_once} "
        f"at a time; MLflow {'grid run ' + top.run_id if top else 'parent run ' + points[0]['parent'].run_id}")
    runs = [p["parent"] for p in points] + ([top] if top else [])
    try:
        results = _train_all(train_path, eval_path, gt_path, o, points, seeds, metric, at_once, log)
        summary, chosen = _choose(points, seeds, metric, results, top, o, at_once, log)
    except BaseException:
        for r in runs:
            r.end(ok=False)
        raise
    for r in runs:
        r.end(ok=True)
    for p in points:
        a = p["aggregate"].get(metric)
        if a:
            log(f"[train] {p['name']}: {metric} over {len(seeds)} seeds {a['mean']:.4f} ± {a['std']:.4f} "
                f"(min {a['min']:.4f}, max {a['max']:.4f}); best seed {p['best']['seed']}")
    if top is not None:
        log(f"[train] best configuration {chosen['config']} (mean {metric} {chosen['mean']:.4f})")
    return summary


def _point_summary(pt: Dict[str, Any], seeds: List[int], metric: str) -> Dict[str, Any]:
    best = pt["best"]
    return {"seeds": seeds, "metric": metric,
            "per_seed": [{"seed": r["seed"], "best_metrics": r["best_metrics"], "best_checkpoint": r["best_checkpoint"],
                          "mlflow_run_id": r["mlflow_run_id"]} for r in pt["per_seed"]],
            "aggregate": pt["aggregate"], "best_seed": best["seed"], "best_checkpoint": best["best_checkpoint"],
            "best_metrics": best["best_metrics"], "mlflow_parent_run_id": pt["parent"].run_id}


def _log_point(pt: Dict[str, Any], metric: str, tracking_uri: Optional[str]) -> None:
    """One configuration's parent run: the aggregate, the best seed, every seed's curves."""
    from vadclip.report.html import plot_seed_curves
    from vadclip.tracking.runs import log_seed_summary, metric_histories

    histories = metric_histories({r["seed"]: r["mlflow_run_id"] for r in pt["per_seed"]}, tracking_uri,
                                 [metric, "loss"])
    fig = plot_seed_curves(histories, [metric, "loss"], best=pt["best"]["seed"])
    try:
        log_seed_summary(pt["parent"].run_id, pt["parent"].tracking_uri, pt["aggregate"], pt["best"]["seed"],
                         pt["best"]["mlflow_run_id"], fig, {r["seed"]: r["best_metrics"] for r in pt["per_seed"]})
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
