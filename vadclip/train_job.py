"""Distributed VadCLIP training: Ray Train ``TorchTrainer`` (Train V2) over Ray Data
shards of the Parquet feature set, DDP on Gloo (CPU) or NCCL (GPU), per-epoch
evaluation on rank 0, checkpoints through ``ray.train.report``, MLflow tracking,
and registration of the best model with a ``@champion``-style alias."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

from .config import VadConfig
from .gt import Intervals, read_gt

CKPT_FILE = "vadclip.pt"
STATE_FILE = "train_state.pt"


# ------------------------------------------------------------------- data preparation
def _prep_batch(batch: Dict[str, Any], cfg_dict: Dict[str, Any]) -> Dict[str, Any]:
    """Ray Data map: feature rows → training view (pool/pad to visual_length)."""
    from .features import process_train, row_features

    cfg = VadConfig.from_dict(cfg_dict)
    feats, lengths, labels = [], [], []
    for i in range(len(batch["video_id"])):
        row = {k: batch[k][i] for k in ("video_id", "features", "snippet_count", "feature_dim")}
        f, n = process_train(row_features(row), cfg.visual_length)
        feats.append(f)
        lengths.append(n)
        labels.append(cfg.label_vector(batch["label"][i]))
    return {"x": np.stack(feats), "length": np.asarray(lengths, np.int64), "y": np.stack(labels),
            "video_id": np.asarray(batch["video_id"], dtype=object)}


def _check_labels(rows_labels: List[Optional[str]], cfg: VadConfig, source: str) -> None:
    for lab in set(rows_labels):
        if lab is None:
            raise ValueError(f"{source}: training rows need a video-level label")
        cfg.label_vector(lab)  # raises LabelError naming the label


# ---------------------------------------------------------------------- worker loop
def train_loop_per_worker(config: Dict[str, Any]) -> None:
    import torch
    import ray.train
    import ray.train.torch

    from .checkpoint import checkpoint_dict
    from .clip_backbone import FrozenCLIP
    from .model import VadCLIP
    from .training import evaluate, make_optimizer, train_step

    cfg = VadConfig.from_dict(config["cfg"])
    # one readable line per epoch from rank 0 (Train V2 both logs and echoes print(), and
    # logs two more INFO lines per report and rank): vadclip logs, Ray Train warns
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    log = logging.getLogger("vadclip.train")
    log.setLevel(logging.INFO)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed + rank)

    clip = FrozenCLIP(cfg.clip_model, cfg.clip_pretrained, cfg.clip_model_kwargs, device=str(device))
    model = VadCLIP(cfg, clip)
    opt, sched = make_optimizer(model, cfg)
    start_epoch, best, history = 0, -float("inf"), []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            st = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start_epoch, best, history = st["epoch"] + 1, st["best"], st["history"]
        if rank == 0:
            log.info(f"[train] resumed from checkpoint after epoch {st['epoch'] + 1}")
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model

    # materialise this worker's shard once (training view, bounded by the shard size)
    shard = ray.train.get_dataset_shard("train")
    xs, ls, ys = [], [], []
    for b in shard.iter_batches(batch_size=64, batch_format="numpy"):
        xs.append(b["x"]), ls.append(b["length"]), ys.append(b["y"])
    X = torch.from_numpy(np.concatenate(xs)) if xs else torch.zeros(0)
    L = torch.from_numpy(np.concatenate(ls)) if ls else torch.zeros(0, dtype=torch.long)
    Y = torch.from_numpy(np.concatenate(ys)) if ys else torch.zeros(0)
    if len(X) == 0:
        raise RuntimeError(f"worker {rank} received no training rows; use fewer workers")
    normal = (Y[:, 0] == 1) & (Y[:, 1:].sum(1) == 0)
    norm_idx, abn_idx = torch.where(normal)[0], torch.where(~normal)[0]
    steps = int(config["steps_per_epoch"])
    per_side = max(1, cfg.batch_size // world)

    eval_rows, gt = None, config.get("gt") or {}
    if rank == 0 and config.get("has_eval"):
        eval_rows = list(ray.train.get_dataset_shard("eval").iter_rows())
    fail_at = config.get("fail_after_epoch")
    marker = config.get("fail_marker")

    def sampler(idx: torch.Tensor, gen: torch.Generator):
        while True:
            for i in idx[torch.randperm(len(idx), generator=gen)]:
                yield int(i)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 17 + rank)
        model.train()
        if cfg.balanced_batches:
            if len(norm_idx) == 0 or len(abn_idx) == 0:
                raise RuntimeError(f"worker {rank}: balanced batches need normal and abnormal rows "
                                   f"(got {len(norm_idx)} normal, {len(abn_idx)} abnormal)")
            ns, as_ = sampler(norm_idx, gen), sampler(abn_idx, gen)
            plan = [[next(ns) for _ in range(per_side)] + [next(as_) for _ in range(per_side)] for _ in range(steps)]
        else:
            al = sampler(torch.arange(len(X)), gen)
            plan = [[next(al) for _ in range(per_side)] for _ in range(steps)]
        sums: Dict[str, float] = {}
        for b in plan:
            ib = torch.tensor(b)
            parts = train_step(model, opt, (X[ib].float(), L[ib], Y[ib]), cfg, device)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        sched.step()
        metrics: Dict[str, Any] = {k: v / max(1, len(plan)) for k, v in sums.items()}
        metrics.update(epoch=epoch + 1, lr=opt.param_groups[0]["lr"], epoch_time_s=time.time() - t0)

        if rank == 0:
            if eval_rows:
                metrics.update(evaluate(core, eval_rows, gt, cfg, str(device)))
            score = metrics.get(config["metric"], float("nan"))
            if score is None or not np.isfinite(score):
                score = -metrics["loss"]
            metrics["score"] = float(score)
            is_best = metrics["score"] > best
            best = max(best, metrics["score"])
            history.append({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            _mlflow_log(config, metrics, epoch + 1)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": core.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "epoch": epoch, "best": best,
                            "history": history}, os.path.join(d, STATE_FILE))
                torch.save(checkpoint_dict(core, epoch=epoch + 1, metrics=metrics), os.path.join(d, CKPT_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            log.info(f"[train] epoch {epoch + 1}/{cfg.epochs} loss {metrics['loss']:.4f} "
                  f"{config['metric']} {metrics.get(config['metric'], float('nan')):.4f}"
                  f"{' (best)' if is_best else ''}")
        else:
            ray.train.report({"epoch": epoch + 1, "loss": metrics["loss"]})
        if fail_at is not None and epoch + 1 == fail_at and marker and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError(f"injected failure after epoch {epoch + 1} (test of crash recovery)")


def _mlflow_log(config: Dict[str, Any], metrics: Dict[str, Any], step: int) -> None:
    run_id = config.get("mlflow_run_id")
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=config["tracking_uri"])
    ts = int(time.time() * 1000)
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()
                                      if isinstance(v, (int, float)) and np.isfinite(v) and k != "epoch"])


# --------------------------------------------------------------------------- driver
def check_inputs(train_path: str, cfg: VadConfig, eval_path: Optional[str], gt_path: Optional[str],
                 eval_crop: Optional[int] = None) -> Dict[str, Any]:
    """Everything about the inputs that can be known before a worker starts: both
    feature sets exist and have the CLIP's dimension, one row per video and crop,
    every training label is in the label space, evaluation has ground truth and the
    crop to evaluate is present.  Raises an :class:`InputError` naming the problem."""
    import pyarrow.parquet as pq

    from .clip_backbone import clip_embed_dim
    from .errors import InputError
    from .features import check_feature_set

    if eval_path and not gt_path:
        raise InputError(f"--eval {eval_path} needs --gt: the evaluation metrics (auc, ap, map) are computed "
                         "against frame ground truth")
    if gt_path and not eval_path:
        raise InputError(f"--gt {gt_path} given without --eval (the feature set to evaluate)")
    dim = clip_embed_dim(cfg.clip_model, cfg.clip_model_kwargs)
    check_feature_set(train_path, dim, what="training feature set")
    meta = pq.read_table(train_path, columns=["video_id", "crop", "label"]).to_pylist()
    seen = set()
    for r in meta:
        key = (r["video_id"], r["crop"])
        if key in seen:
            raise InputError(f"{train_path}: video {r['video_id']!r} crop {r['crop']} appears more than once")
        seen.add(key)
    labels = [r["label"] for r in meta]
    _check_labels(labels, cfg, train_path)
    out: Dict[str, Any] = {"labels": labels, "gt": {}, "eval_crop": None}
    if eval_path:
        ev = check_feature_set(eval_path, dim, crop=eval_crop, what="evaluation feature set")
        out["eval_crop"] = eval_crop if eval_crop is not None else ev["crops"][0]
        out["gt"] = read_gt(gt_path)
    return out


def run_train(train_path: str, cfg: VadConfig, storage_path: str, run_name: str = "vadclip",
              eval_path: Optional[str] = None, gt_path: Optional[str] = None, num_workers: int = 2,
              use_gpu: bool = False, cpus_per_worker: float = 1.0, metric: Optional[str] = None,
              tracking_uri: Optional[str] = None, experiment: str = "vadclip",
              register_name: Optional[str] = None, alias: str = "champion", max_failures: int = 2,
              eval_crop: Optional[int] = None, address: Optional[str] = None,
              fail_after_epoch: Optional[int] = None, log=print) -> Dict[str, Any]:
    """Train on a Parquet feature set; returns a summary with the best metrics, the best
    checkpoint path, the MLflow run id and the registered model version (if any).
    The evaluation set is scored on ``eval_crop`` (default: the lowest crop it holds,
    e.g. crop 5 for the official UCF-Crime test list)."""
    import mlflow
    import ray
    import ray.data
    import ray.train
    from mlflow.tracking import MlflowClient
    from ray.data.expressions import col
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .raysetup import ensure_ray
    from .tracking import use_experiment

    from .storage import absolute

    train_path, eval_path, gt_path, storage_path = map(absolute, (train_path, eval_path, gt_path, storage_path))
    metric = metric or ("ap" if cfg.preset == "xd" else "auc")
    checked = check_inputs(train_path, cfg, eval_path, gt_path, eval_crop)
    labels, gt = checked["labels"], checked["gt"]
    ensure_ray(address)
    n_normal = sum(cfg.is_normal(lab) for lab in labels)
    n_abn = len(labels) - n_normal
    if cfg.balanced_batches:
        steps = max(1, min(n_normal, n_abn) // cfg.batch_size)
    else:
        steps = max(1, len(labels) // cfg.batch_size)
    cfg_dict = cfg.to_dict()
    # shuffle once so every worker's shard mixes normal and abnormal videos
    train_ds = ray.data.read_parquet(train_path).random_shuffle(seed=cfg.seed).map_batches(
        _prep_batch, fn_kwargs={"cfg_dict": cfg_dict}, batch_size=16, batch_format="numpy")
    datasets = {"train": train_ds}
    if eval_path:
        datasets["eval"] = ray.data.read_parquet(eval_path).filter(expr=col("crop") == checked["eval_crop"])

    use_experiment(experiment, tracking_uri)
    tracking_uri = mlflow.get_tracking_uri()
    run_id = _find_or_create_run(experiment, run_name, storage_path)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params({k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                               for k, v in cfg_dict.items() if k not in ("class_keys", "class_prompts")})
            mlflow.log_params({"num_workers": num_workers, "use_gpu": use_gpu, "train_rows": len(labels),
                               "train_normal": n_normal, "train_abnormal": n_abn, "steps_per_epoch": steps,
                               "metric": metric, "classes": json.dumps(cfg.class_keys),
                               "eval_crop": checked["eval_crop"]})
        config = {"cfg": cfg_dict, "steps_per_epoch": steps, "metric": metric, "gt": gt,
                  "has_eval": bool(eval_path), "mlflow_run_id": run_id, "tracking_uri": tracking_uri}
        if fail_after_epoch is not None:
            config["fail_after_epoch"] = fail_after_epoch
            config["fail_marker"] = os.path.join(os.path.abspath(storage_path), run_name + ".failed-once")
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": cpus_per_worker,
                                                               **({"GPU": 1} if use_gpu else {})}),
            run_config=RunConfig(name=run_name, storage_path=os.path.abspath(storage_path),
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=3,
                                                                    checkpoint_score_attribute="score",
                                                                    checkpoint_score_order="max")),
            datasets=datasets, dataset_config=DataConfig(datasets_to_split=["train"]),
        )
        result = trainer.fit()
        if result.error:
            raise result.error
        best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get("score", -np.inf))
        best_dir = os.path.join(os.path.abspath(storage_path), run_name, "best")
        os.makedirs(best_dir, exist_ok=True)
        with best_ckpt.as_directory() as d:
            import shutil
            shutil.copy(os.path.join(d, CKPT_FILE), os.path.join(best_dir, CKPT_FILE))
        best_path = os.path.join(best_dir, CKPT_FILE)
        summary = {"best_checkpoint": best_path, "best_metrics": {k: v for k, v in best_metrics.items()
                                                                  if isinstance(v, (int, float))},
                   "metric": metric, "mlflow_run_id": run_id, "tracking_uri": tracking_uri}
        from .registry import log_and_register

        summary.update(log_and_register(best_path, run_id, tracking_uri, register_name, alias, metric,
                                        best_metrics.get(metric, best_metrics.get("score")),
                                        best_epoch=best_metrics.get("epoch"), log=log))
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # never leave a failed training FINISHED
        raise
    client.set_terminated(run_id, "FINISHED")
    log(f"[train] best {metric} {summary['best_metrics'].get(metric, float('nan')):.4f} "
        f"(epoch {summary['best_metrics'].get('epoch')}) → {best_path}")
    return summary


def _find_or_create_run(experiment: str, run_name: str, storage_path: str) -> str:
    """Re-use the MLflow run of an interrupted training with the same name and storage."""
    import mlflow

    key = os.path.join(os.path.abspath(storage_path), run_name)
    exp = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.vadclip_storage = '{key}'",
                              output_format="list") if exp else []
    if runs:
        return runs[0].info.run_id
    with mlflow.start_run(run_name=run_name) as r:
        mlflow.set_tag("vadclip_storage", key)
        return r.info.run_id
