"""Distributed VadCLIP training: Ray Train ``TorchTrainer`` (Train V2) over Ray Data
shards of the Parquet feature set, DDP on Gloo (CPU) or NCCL (GPU), per-epoch
evaluation on rank 0, checkpoints through ``ray.train.report``, MLflow tracking,
and registration of the best model with a ``@champion``-style alias."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from vadclip.io import provenance, storage
from vadclip.model.config import VadConfig
from vadclip.io.gt import check_matches, read_gt
from vadclip.options import ADDRESS_HELP, TRACKING_URI_HELP, option
from vadclip.io.storage import redact

CKPT_FILE = "vadclip.pt"
STATE_FILE = "train_state.pt"


# ------------------------------------------------------------------- data preparation
def _prep_batch(batch: Dict[str, Any], cfg_dict: Dict[str, Any]) -> Dict[str, Any]:
    """Ray Data map: feature rows → training view (:func:`vadclip.train.batches.prepare_batch`)."""
    from vadclip.train.batches import prepare_batch

    return prepare_batch(batch, VadConfig.from_dict(cfg_dict))


def _check_labels(rows_labels: List[Optional[str]], cfg: VadConfig, source: str) -> None:
    for lab in set(rows_labels):
        if lab is None:
            raise ValueError(f"{source}: training rows need a video-level label")
        cfg.label_vector(lab)  # raises LabelError naming the label


def rank_batch_size(cfg: VadConfig, world: int) -> int:
    """Each DDP rank's share of the batch (per side when balanced); the global batch
    is the official one when ``batch_size`` divides by the number of workers."""
    return max(1, cfg.batch_size // world)


def _shard_name(rank: int) -> str:
    return f"train_rank{rank}"


# ------------------------------------------------------------------ the Ray adapter
@dataclass
class WorkerConfig:
    """What the driver hands every training rank."""
    cfg: Dict[str, Any]                      # VadConfig.to_dict()
    metric: str                              # model selection
    recipe: str = "vadclip"                  # vadclip.train.recipes
    eval_every_samples: Optional[int] = None  # evaluation points within epochs (None: at epoch ends)
    has_eval: bool = False                   # rank 0 reads the "eval" dataset shard
    gt: Dict[str, Any] = field(default_factory=dict)
    weights: Any = None                      # the CLIP weights the driver resolved (shared through Ray)
    max_steps_per_epoch: Optional[int] = None
    micro_batch: Optional[int] = None
    mlflow_run_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    epoch_lines: bool = True                 # rank 0 prints a line per epoch (else only its log file has them)


def _quiet_ray_train_logs():
    """One readable line per epoch from rank 0 (Train V2 both logs and echoes print(),
    and logs two more INFO lines per report and rank): vadclip logs, Ray Train warns."""
    # Train V2's report logger is named by its file path (logging.getLogger(__file__))
    names = [n for n in logging.root.manager.loggerDict
             if n.startswith("ray.train") or f"{os.sep}ray{os.sep}train{os.sep}" in n]
    for name in names + ["ray.train"]:
        logging.getLogger(name).setLevel(logging.WARNING)
    log = logging.getLogger("vadclip.train")
    log.setLevel(logging.INFO)
    return log


def _cache_shard(rank: int):
    """Stream this worker's shard (already in the training view; the videos dealt to
    this rank, :func:`vadclip.train.batches.deal`) onto node-local disk, in key order."""
    import ray.train

    from vadclip.train.batches import ShardCache

    cache = ShardCache(prefix=f"vadclip-shard-r{rank}-")
    try:
        for b in ray.train.get_dataset_shard(_shard_name(rank)).iter_batches(batch_size=16, batch_format="numpy",
                                                                             prefetch_batches=1):
            cache.append(b["x"], b["length"], b["y"], b["label"], b["key"])
        if not len(cache):
            raise RuntimeError(f"worker {rank} received no training rows; use fewer workers")
        cache.freeze()
    except BaseException:
        cache.close()
        raise
    return cache


class _RayRank:
    """One Ray Train rank: the framework-free :class:`EpochLoop`, restored from Ray
    Train's checkpoint, DDP-prepared by Ray, reporting each epoch's checkpoint through
    ``ray.train.report`` and its metrics to MLflow."""

    def __init__(self, wc: WorkerConfig):
        import ray.train
        import ray.train.torch
        import torch

        from vadclip.clip.backbone import FrozenCLIP
        from vadclip.clip.weights import activate
        from vadclip.model.network import VadCLIP
        from vadclip.tracking.runs import log_metrics
        from vadclip.train.batches import make_optimizer
        from vadclip.train.loop import EpochLoop, MemoryWatch, Ranks
        from vadclip.train.recipes import get_recipe

        self.wc, self.cfg = wc, VadConfig.from_dict(wc.cfg)
        self.memory = MemoryWatch()
        log = _quiet_ray_train_logs()
        ctx = ray.train.get_context()
        self.rank, world = ctx.get_world_rank(), ctx.get_world_size()
        device = ray.train.torch.get_device()
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed + self.rank)
        activate(wc.weights)
        model = VadCLIP(self.cfg, FrozenCLIP(self.cfg.clip, device=str(device)))
        opt, sched = make_optimizer(model, self.cfg)
        self.loop = EpochLoop(model, model, opt, sched, self.cfg, get_recipe(wc.recipe), wc.metric,
                              Ranks(self.rank, world), device, rank_batch_size(self.cfg, world),
                              eval_every=wc.eval_every_samples, micro_batch=wc.micro_batch,
                              log=log.info if wc.epoch_lines else log.debug,
                              memory=self.memory,
                              on_eval=lambda m, step: log_metrics(wc.mlflow_run_id, wc.tracking_uri, m, step))
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                self.loop.load_state_dict(torch.load(os.path.join(d, STATE_FILE), map_location="cpu",
                                                     weights_only=True))
            if self.rank == 0:
                log.info(f"[train] resumed from checkpoint after epoch {self.loop.state.start_epoch}")
        self.loop.model = ray.train.torch.prepare_model(model)
        if self.rank == 0 and wc.has_eval:
            self.loop.eval_rows = sorted(ray.train.get_dataset_shard("eval").iter_rows(),
                                         key=lambda r: (str(r["video_id"]), int(r["crop"])))
            self.loop.gt = wc.gt

    def report(self, metrics: Dict[str, Any], epoch: int) -> None:
        """Once per epoch on every rank; rank 0 with the checkpoint (resume state + model)."""
        import ray.train
        import torch

        from vadclip.model.checkpoint import checkpoint_dict
        from vadclip.tracking.runs import log_metrics

        if self.rank != 0:
            ray.train.report({"epoch": metrics["epoch"]})
            return
        log_metrics(self.wc.mlflow_run_id, self.wc.tracking_uri, metrics, epoch + 1)
        with tempfile.TemporaryDirectory() as d:
            torch.save(dict(self.loop.state_dict(), epoch=epoch), os.path.join(d, STATE_FILE))
            torch.save(checkpoint_dict(self.loop.core, epoch=epoch + 1, metrics=metrics), os.path.join(d, CKPT_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def run(self) -> None:
        shard = _cache_shard(self.rank)
        try:
            steps = self.loop.steps(shard.labels, self.wc.max_steps_per_epoch)
            for epoch in range(self.loop.state.start_epoch, self.cfg.epochs):
                self.report(self.loop.epoch(shard, epoch, steps), epoch)
        finally:
            shard.close()
            self.memory.stop()


def _train_logging():
    """Ray Train's own console lines (resources requested, the worker group started, the
    process group) at WARNING unless ``VADCLIP_VERBOSE=1``: its log files keep them."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if os.environ.get("VADCLIP_VERBOSE") == "1" else "WARNING")


def train_loop_per_worker(config: Dict[str, Any]) -> None:
    from vadclip.jobs.cluster import quiet_ray_data

    quiet_ray_data()
    _RayRank(config["worker"]).run()


# --------------------------------------------------------------------------- driver
def check_inputs(train_path: str, cfg: VadConfig, eval_path: Optional[str], gt_path: Optional[str],
                 eval_crop: Optional[int] = None, allow_feature_mismatch: bool = False, log=None) -> Dict[str, Any]:
    """Everything about the inputs that can be known before a worker starts: both
    feature sets exist and have the CLIP's dimension, one row per video and crop,
    every training label is in the label space, evaluation has ground truth and the
    crop to evaluate is present.  Raises an :class:`InputError` naming the problem."""
    from vadclip.errors import InputError
    from vadclip.io.features import check_feature_set

    if eval_path and not gt_path:
        raise InputError(f"--eval {eval_path} needs --gt: the evaluation metrics (auc, ap, map) are computed "
                         "against frame ground truth")
    if gt_path and not eval_path:
        raise InputError(f"--gt {gt_path} given without --eval (the feature set to evaluate)")
    weights = cfg.clip.resolve()       # the text tower's weights, once, before any worker
    dim = cfg.clip.embed_dim
    meta_table = check_feature_set(train_path, dim, what="training feature set")["meta"]
    long = [v for v, seg in zip(meta_table.column("video_id").to_pylist(), meta_table.column("segmented").to_pylist())
            if seg]
    if long:
        raise InputError(f"{train_path}: {len(long)} recording(s) kept in segments (longer than --segment-snippets "
                         f"when extracted, e.g. {long[0]!r}): training takes clips of a video each, as the paper's; "
                         "cut long recordings into clips for a training set")
    meta = meta_table.select(["video_id", "crop", "label"]).to_pylist()
    seen = set()
    for r in meta:
        key = (r["video_id"], r["crop"])
        if key in seen:
            raise InputError(f"{train_path}: video {r['video_id']!r} crop {r['crop']} appears more than once")
        seen.add(key)
    labels = [r["label"] for r in meta]
    _check_labels(labels, cfg, train_path)
    train_prov = provenance.read(train_path)
    out: Dict[str, Any] = {"labels": labels, "gt": {}, "eval_crop": None, "meta": meta_table, "eval_meta": None,
                           "weights": weights, "provenance": train_prov, "feature_mismatch": None}
    if eval_path:
        ev = check_feature_set(eval_path, dim, crop=eval_crop, what="evaluation feature set")
        out["eval_crop"] = eval_crop if eval_crop is not None else ev["crops"][0]
        out["eval_meta"] = ev["meta"]
        line = provenance.mismatch(train_prov, provenance.read(eval_path), f"a model trained on {train_path}",
                                   f"the evaluation features {eval_path}")
        if line and not allow_feature_mismatch:
            raise provenance.ProvenanceError(line + "; --allow-feature-mismatch evaluates anyway")
        if line:
            (log or logging.getLogger("vadclip").warning)(f"[train] {line} (evaluated anyway: --allow-feature-mismatch)")
        out["feature_mismatch"] = line
        out["gt"] = read_gt(gt_path)
        check_matches(out["gt"], gt_path, ev["meta"].column("video_id").to_pylist(),
                      f"the videos of {eval_path}")
    return out


@dataclass
class TrainOptions:
    """How a training runs (what it learns is the :class:`VadConfig`); the command
    line's flags are these fields."""
    storage: str = option("./runs", help="Ray Train storage path or URI (checkpoints; resume)")
    run_name: str = option("vadclip", help="run name; re-running the same name and storage resumes it")
    num_workers: int = option(2, help="Ray Train workers (DDP ranks)")
    use_gpu: bool = option(False, help="one GPU per worker (NCCL)")
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker")
    metric: Optional[str] = option(None, help="model selection metric (default: the recipe's: auc for ucf, ap for "
                                              "xd; ap_align for xd with --recipe paper)")
    recipe: str = option("vadclip", choices=["vadclip", "paper", "official"],
                         help="vadclip: evaluate once per epoch, keep the best; paper: the official loops that "
                              "produced the paper's numbers — UCF evaluates every 1,280 samples, and the best model "
                              "so far is reloaded at each epoch end ('official' is its older name)")
    eval_every_samples: Optional[int] = option(None, help="evaluate within epochs every this many samples "
                                                          "(default: the recipe's)")
    eval_crop: Optional[int] = option(None, help="crop of the evaluation set to evaluate (default: the lowest "
                                                 "crop it holds)")
    max_failures: int = option(2, help="worker-group restarts from the last checkpoint")
    epoch_lines: bool = option(True, cli=False, help="a line per epoch on the console (the demo: only the best, "
                                                     "from the driver)")
    register_name: Optional[str] = option(None, flag="--register", help="register the best model under this name")
    alias: str = option("champion", help="alias moved to the new version when it beats the current one")
    experiment: str = option("vadclip", help="MLflow experiment")
    tracking_uri: Optional[str] = option(None, help=TRACKING_URI_HELP)
    address: Optional[str] = option(None, help=ADDRESS_HELP)
    max_steps_per_epoch: Optional[int] = option(None, help="cut each epoch to this many steps (smoke runs; "
                                                           "default: every video once)")
    micro_batch: Optional[int] = option(None, help="rows per forward/backward pass on a worker; gradients are "
                                                   "accumulated to the same step in less memory (default: the "
                                                   "worker's whole batch at once)")
    allow_feature_mismatch: bool = option(False, help="evaluate on --eval features whose provenance differs from "
                                                      "--train's (recorded as an MLflow tag; default: refused in "
                                                      "one line, exit 2)")
    seeds: Optional[str] = option(None, group="many seeds (vadclip.jobs.seeds)",
                                  help="train one model per seed, concurrently, e.g. 0,1,2,3,4: an MLflow parent run "
                                       "with mean, std, min and max of every metric; the best seed is registered")
    repeats: Optional[int] = option(None, group="many seeds (vadclip.jobs.seeds)",
                                    help="as --seeds, with this many seeds from the config's seed on")
    grid: Optional[str] = option(None, group="many seeds (vadclip.jobs.seeds)",
                                 help="a small grid of config values, each point trained with the seeds: "
                                      "\"lr=1e-5,2e-5;attn_window=8,16\" (scalar config fields; ';' between fields). "
                                      "The point with the best mean of the selection metric is registered")
    max_concurrent: Optional[int] = option(None, group="many seeds (vadclip.jobs.seeds)",
                                           help="seeds training at once (default: as many as the cluster's GPUs, or "
                                                "CPUs less one for Ray Data, hold)")
    log_model: bool = option(True, cli=False, help="log the best model to the MLflow run as a pyfunc (each seed "
                                                   "of many: no; only the best seed's is logged)")
    mlflow_parent_run_id: Optional[str] = option(None, cli=False, help="the MLflow run this training is a child of "
                                                                       "(set for each seed of --seeds)")


def run_train(train_path: str, cfg: VadConfig, storage_path: Optional[str] = None, run_name: Optional[str] = None,
              eval_path: Optional[str] = None, gt_path: Optional[str] = None,
              opts: Optional[TrainOptions] = None, log=None, **options: Any) -> Dict[str, Any]:
    """Train on a Parquet feature set; returns a summary with the best metrics, the best
    checkpoint path, the MLflow run id and the registered model version (if any).
    ``opts`` (or its fields as keyword arguments, which override it) say how; the
    evaluation set is scored on ``eval_crop`` (default: the lowest crop it holds,
    e.g. crop 5 for the official UCF-Crime test list)."""
    unknown = set(options) - {f.name for f in dataclasses.fields(TrainOptions)}
    if unknown:
        raise TypeError(f"run_train: unknown options {sorted(unknown)}")
    o = dataclasses.replace(opts or TrainOptions(), **options,
                            **({"storage": storage_path} if storage_path is not None else {}),
                            **({"run_name": run_name} if run_name is not None else {}))
    if o.seeds or o.repeats or o.grid:
        from vadclip.errors import InputError

        raise InputError("run_train trains one model: many seeds or a grid is vadclip.jobs.seeds.run_seeds "
                         "(`vadclip train --seeds/--repeats/--grid` calls it)")
    return _run_train(train_path, cfg, eval_path, gt_path, o, log or logging.getLogger("vadclip").info)


def _datasets(train_path: str, eval_path: Optional[str], checked: Dict[str, Any], cfg: VadConfig,
              num_workers: int) -> Dict[str, Any]:
    """A Ray dataset per rank (its videos dealt by the seed, normal and abnormal alike on
    every rank, not by the order Ray Data delivers blocks in: a seed trains the same way
    twice), and the evaluation crop's rows."""
    import pyarrow.compute as pc

    from vadclip.errors import InputError
    from vadclip.io.features import FEATURE_SCHEMA
    from vadclip.io.parts import dataset_files
    from vadclip.jobs.output import parts_dataset
    from vadclip.train.batches import deal

    hands = deal([(r["video_id"], r["label"]) for r in checked["meta"].select(["video_id", "label"]).to_pylist()],
                 cfg, num_workers, cfg.seed)
    if any(not h for h in hands):
        raise InputError(f"{train_path}: {len(checked['labels'])} training rows cannot be shared by {num_workers} "
                         "workers; use fewer workers")
    files = dataset_files(train_path)
    datasets = {_shard_name(r): parts_dataset(files, FEATURE_SCHEMA, pc.field("video_id").isin(list(hand))).map_batches(
        _prep_batch, fn_kwargs={"cfg_dict": cfg.to_dict()}, batch_size=16, batch_format="numpy")
        for r, hand in enumerate(hands)}
    if eval_path:
        datasets["eval"] = parts_dataset(dataset_files(eval_path), FEATURE_SCHEMA,
                                         pc.field("crop") == checked["eval_crop"])
    return datasets


def _fit(o: TrainOptions, worker: WorkerConfig, datasets: Dict[str, Any], best_path: str) -> Dict[str, Any]:
    """Ray Train's run (resumed from its checkpoints, restarted after failures up to
    ``o.max_failures``); the best checkpoint uploaded to ``best_path``; its metrics."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"worker": worker},
        scaling_config=ScalingConfig(num_workers=o.num_workers, use_gpu=o.use_gpu,
                                     resources_per_worker={"CPU": o.cpus_per_worker,
                                                           **({"GPU": 1} if o.use_gpu else {})}),
        run_config=RunConfig(name=o.run_name, storage_path=o.storage, logging_config=_train_logging(),
                             failure_config=FailureConfig(max_failures=o.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=3, checkpoint_score_attribute="score",
                                                                checkpoint_score_order="max")),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get("score", -np.inf))
    with best_ckpt.as_directory() as d:
        storage.upload(os.path.join(d, CKPT_FILE), best_path)
    return best_metrics


def _register(o: TrainOptions, best_path: str, best_metrics: Dict[str, Any], metric: str, run_id: str,
              tracking_uri: str, seed: int, log) -> Dict[str, Any]:
    """The training's summary; its best model logged to MLflow and registered (unless it is
    one seed of many: the best of them is registered afterwards)."""
    from vadclip.tracking.registry import log_and_register
    from vadclip.tracking.runs import log_metrics

    summary = {"best_checkpoint": best_path, "best_metrics": {k: v for k, v in best_metrics.items()
                                                              if isinstance(v, (int, float))},
               "metric": metric, "mlflow_run_id": run_id, "tracking_uri": redact(tracking_uri), "seed": seed}
    reg_metric, best_value = selection_metric(best_metrics, metric)
    summary["metric"] = reg_metric
    if o.log_model:
        summary.update(log_and_register(best_path, run_id, tracking_uri, o.register_name, o.alias, reg_metric,
                                        best_value, best_epoch=best_metrics.get("epoch"), log=log))
    else:
        log_metrics(run_id, tracking_uri, {f"best_{reg_metric}": best_value}, 0)
    return summary


def _run_train(train_path: str, cfg: VadConfig, eval_path: Optional[str], gt_path: Optional[str],
               o: TrainOptions, log) -> Dict[str, Any]:
    from vadclip.errors import InputError
    from vadclip.jobs.cluster import ensure_ray, share_weights
    from vadclip.tracking.runs import TrainingRun, with_credentials

    from vadclip.train.batches import batch_plan
    from vadclip.train.recipes import get_recipe

    train_path, eval_path, gt_path = map(storage.absolute, (train_path, eval_path, gt_path))
    o = dataclasses.replace(o, storage=storage.absolute(o.storage))
    recipe = get_recipe(o.recipe)
    if recipe.needs_eval and not eval_path:
        raise InputError(f"--recipe {recipe.name} selects its model on an evaluation set: give --eval and --gt")
    o = dataclasses.replace(o, recipe=recipe.name, eval_every_samples=o.eval_every_samples
                            if o.eval_every_samples is not None else recipe.eval_every_samples(cfg.preset))
    metric = o.metric or recipe.default_metric(cfg.preset)
    checked = check_inputs(train_path, cfg, eval_path, gt_path, o.eval_crop, o.allow_feature_mismatch, log)
    labels, gt = checked["labels"], checked["gt"]
    # the model records what it was trained on (checkpoint, MLflow run, registered version)
    cfg = cfg.replace(feature_provenance=checked["provenance"])
    ensure_ray(o.address)
    n_normal = sum(cfg.is_normal(lab) for lab in labels)
    n_abn = len(labels) - n_normal
    # the steps of an epoch as if the shards split the labels evenly (each rank counts its own)
    try:
        steps = len(batch_plan(labels, cfg, 0, rank_batch_size(cfg, o.num_workers) * o.num_workers,
                               o.max_steps_per_epoch))
    except ValueError as exc:
        raise InputError(f"{train_path}: {exc}") from None
    cfg_dict = cfg.to_dict()
    datasets = _datasets(train_path, eval_path, checked, cfg, o.num_workers)

    run = TrainingRun(o.experiment, o.tracking_uri, o.run_name, storage.join(o.storage, o.run_name),
                      parent_run_id=o.mlflow_parent_run_id)
    run_id, tracking_uri = run.run_id, run.tracking_uri
    params = _params(o, cfg_dict, metric, {"train_rows": len(labels), "train_normal": n_normal,
                                           "train_abnormal": n_abn, "steps_per_epoch": steps,
                                           "classes": cfg.class_keys, "eval_crop": checked["eval_crop"]})
    changed = run.changed_params(params)
    if changed:   # the same run name and storage with other settings: its checkpoints are another training's
        raise InputError(f"run {o.run_name!r} under {o.storage} was started with other settings "
                         f"({'; '.join(changed[:4])}{'; …' if len(changed) > 4 else ''}: before vs now): give "
                         f"another --run-name to train these settings, or remove {storage.join(o.storage, o.run_name)} "
                         "to start this one over")
    result_path = storage.join(o.storage, o.run_name, "best", "result.json")
    try:
        best_path = storage.join(o.storage, o.run_name, "best", CKPT_FILE)
        finished = _finished_result(run, result_path, cfg_dict, metric)
        if finished is not None:
            best_metrics = finished["best_metrics"]
            log(f"[train] run {o.run_name!r} already finished with this config: nothing to train")
        else:
            run.log_start(
                params,
                {"vadclip.feature_provenance": json.dumps(checked["provenance"], sort_keys=True),
                 "vadclip.feature_mismatch": checked["feature_mismatch"]},
                [(train_path, "train", "training", checked["meta"])]
                + ([(eval_path, "eval", "evaluation", checked["eval_meta"])] if eval_path else []))
            worker = WorkerConfig(cfg=cfg_dict, metric=metric, recipe=o.recipe,
                                  eval_every_samples=o.eval_every_samples, has_eval=bool(eval_path), gt=gt,
                                  weights=share_weights(checked["weights"]),
                                  max_steps_per_epoch=o.max_steps_per_epoch, micro_batch=o.micro_batch,
                                  mlflow_run_id=run_id, tracking_uri=with_credentials(tracking_uri),
                                  epoch_lines=o.epoch_lines)
            best_metrics = _fit(o, worker, datasets, best_path)
            storage.write_text(result_path, json.dumps({"config": cfg_dict, "metric": metric, "best_metrics": {
                k: v for k, v in best_metrics.items() if isinstance(v, (int, float))}}))
        summary = _register(o, best_path, best_metrics, metric, run_id, tracking_uri, cfg.seed, log)
    except BaseException:
        run.end(ok=False)   # never leave a failed training FINISHED
        raise
    run.end(ok=True)
    log(f"[train] best {summary['metric']} {selection_metric(summary['best_metrics'], metric)[1]:.4f} "
        f"(epoch {summary['best_metrics'].get('epoch')}) → {best_path}")
    return summary


LOSS_METRIC = "neg_train_loss"     # what ranks epochs and versions trained without --eval


def selection_metric(best_metrics: Dict[str, Any], metric: str) -> Tuple[str, float]:
    """(name, value) a training is ranked and registered by: ``metric`` (auc, ap) where
    it was evaluated; without ``--eval``, minus the training loss under its own name —
    never called AUC."""
    v = best_metrics.get(metric)
    if isinstance(v, (int, float)):
        return metric, float(v)
    v = best_metrics.get("score")
    return LOSS_METRIC, float(v) if isinstance(v, (int, float)) else float("nan")


def _params(o, cfg_dict, metric, extra) -> Dict[str, Any]:
    return {**{k: v for k, v in cfg_dict.items() if k not in ("class_keys", "class_prompts", "feature_provenance")},
            "num_workers": o.num_workers, "use_gpu": o.use_gpu, "metric": metric, "recipe": o.recipe,
            "eval_every_samples": o.eval_every_samples, "micro_batch": o.micro_batch, **extra}


def _finished_result(run, result_path: str, cfg_dict: Dict[str, Any], metric: str) -> Optional[Dict[str, Any]]:
    """The result of this run if it already finished with the same config and metric
    (a re-run then trains nothing and starts no worker); else None."""
    if not run.finished() or not storage.isfile(result_path):
        return None
    done = json.loads(storage.read_text(result_path))
    same = json.loads(json.dumps(cfg_dict)) == done.get("config") and done.get("metric") == metric
    return done if same else None
