"""``vadclip`` command line: extract | train | score | evaluate | compare-features | import-official | demo.

The ``jobs/*.py`` entry points for ``ray job submit`` call the same functions."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import List, Optional

from vadclip.model.config import ClipSpec, VadConfig
from vadclip.errors import EnvironmentProblem, InputError, one_line


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default once: not for required options, not when it is None
    or False, and not when the help text already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or action.default in (None, False, argparse.SUPPRESS) or "default" in text
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


_MISMATCH_HELP = ("use features whose provenance (CLIP model and weights, image size, normalisation, snippet "
                  "length, frame rule) differs from the model's training features; recorded in the summary, MLflow "
                  "and the report (default: refused in one line, exit 2)")


def _add_clip(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CLIP backbone (open_clip)")
    g.add_argument("--clip-model", default=None, help="open_clip model name (default: ViT-B-16)")
    g.add_argument("--clip-pretrained", default=None,
                   help="pretrained tag (downloaded once into the cache), a local weights file or a storage URI "
                        "(s3://models/ViT-B-16.bin), or 'none' for random init; read once per job by the driver "
                        "and handed to the workers through Ray (default: openai)")
    g.add_argument("--tiny-clip", action="store_true",
                   help="use a tiny random-init CLIP (offline; for smoke tests, not real detection)")


def _clip_settings(a, given_only: bool = False) -> dict:
    """The CLIP flags as config fields: ``{"clip": ClipSpec}``; ``given_only``: only the
    flags on the command line, as fields laid over a config file's CLIP."""
    if a.tiny_clip:
        return {"clip": ClipSpec.tiny()}
    out = {}
    if a.clip_model or not given_only:
        out["clip_model"] = a.clip_model or "ViT-B-16"
    if a.clip_pretrained or not given_only:
        pre = a.clip_pretrained or "openai"
        out["clip_pretrained"] = None if str(pre).lower() == "none" else pre
        out["clip_model_kwargs"] = {}
    return out if given_only else {"clip": ClipSpec(out["clip_model"], out["clip_pretrained"])}


def _train_config(a) -> VadConfig:
    """``--config FILE`` (JSON/YAML), then ``--preset``/``--classes``, then the flags given."""
    over = {k: v for k, v in {"epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size,
                              "visual_length": a.visual_length}.items() if v is not None}
    classes = a.classes.split(",") if a.classes else None
    if not a.config:
        return VadConfig.from_preset(a.preset or "ucf", **_clip_settings(a), **over,
                                     **({"classes": classes} if classes else {}))
    import yaml

    from vadclip.io import storage

    try:
        d = yaml.safe_load(storage.read_text(a.config))
    except FileNotFoundError:
        raise InputError(f"config file not found: {a.config}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{a.config}: not JSON or YAML ({one_line(e, 200)})") from None
    if not isinstance(d, dict):
        raise InputError(f"{a.config}: expected a mapping of config fields, got {type(d).__name__}")
    over.update(_clip_settings(a, given_only=True))
    if "class_keys" in d:          # a whole config (e.g. VadConfig.to_dict() of a trained model)
        if a.preset or classes:
            raise InputError(f"{a.config} is a whole config (it has class_keys): --preset/--classes do not apply")
        return VadConfig.from_dict(d).replace(**over)
    preset = a.preset or d.pop("preset", "ucf")
    if classes:
        d["classes"] = classes
    return VadConfig.from_preset(preset, **{**d, **over})


def _add_ray(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: an address, or 'auto' for a cluster started here with `ray start` "
                        "(default: $RAY_ADDRESS, which `ray job submit` sets; else an embedded local Ray)")


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store shared by train, score and evaluate (default: $MLFLOW_TRACKING_URI, "
                        "else sqlite:///./runs/mlflow.db with artifacts in ./runs/mlartifacts)")


def _add_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output parts (resume keeps every part already written)")
    g.add_argument("--rows-per-file", type=int, default=256, help="at most this many rows per Parquet part file")
    g.add_argument("--flush-seconds", type=float, default=60.0,
                   help="write finished rows at least this often, so an interrupted job keeps its work")


def _add_extract_opts(p: argparse.ArgumentParser, crops_help: str) -> None:
    g = p.add_argument_group("video decoding and CLIP encoding")
    g.add_argument("--crops", type=int, default=1, choices=[1, 5, 10], help=crops_help)
    g.add_argument("--batch-size", type=int, default=64, help="images per encoder forward pass")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="encoder precision (default auto: fp16 on a GPU; on a CPU bf16 where it has native bf16 and a "
                        "timing at start-up finds it faster, else fp32; the run summary says which)")
    g.add_argument("--num-encoders", type=int, default=1, help="size of the encoder actor pool")
    g.add_argument("--gpus-per-encoder", type=float, default=None,
                   help="GPUs per encoder actor (default: 1 if the cluster has GPUs, else 0)")
    g.add_argument("--encoder-threads", type=int, default=None,
                   help="CPU-only: torch threads per encoder actor (default: the node's cores / --num-encoders)")
    g.add_argument("--decoder", default="auto", choices=["auto", "decord", "torchcodec"],
                   help="video decoder (default auto: torchcodec where FFmpeg's shared libraries are "
                        "installed, the fastest on the CPU; decord elsewhere; both give the same frames)")
    g.add_argument("--decode-device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: decode on the GPU (torchcodec's NVDEC decoder), in decode tasks that "
                        "reserve --decode-gpus each; the CPU where there is no GPU or NVDEC cannot read a file")
    g.add_argument("--decode-gpus", type=float, default=0.1,
                   help="with --decode-device cuda: the GPU share each decode task reserves "
                        "(an encoder then takes 0.5 GPU unless --gpus-per-encoder says otherwise)")


def _extract_options(a, **clip):
    from vadclip.jobs.extract import ExtractOptions

    return ExtractOptions(crops=a.crops, batch_size=a.batch_size, precision=a.precision,
                          num_encoders=a.num_encoders, gpus_per_encoder=a.gpus_per_encoder,
                          encoder_threads=a.encoder_threads, decoder=a.decoder, decode_device=a.decode_device,
                          decode_gpus=a.decode_gpus, rows_per_file=a.rows_per_file,
                          flush_seconds=a.flush_seconds, **clip)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vadclip", description=__doc__, formatter_class=_HelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    fmt = _HelpFormatter

    p = sub.add_parser("extract", formatter_class=fmt,
                       help="raw videos → CLIP snippet features (Parquet), resumable, errors recorded")
    p.add_argument("source", help="manifest (CSV/Parquet with path[,label,video_id]), a directory, or a glob")
    p.add_argument("--out", required=True, help="output directory (features/, errors/, summary.json)")
    p.add_argument("--snippet-len", type=int, default=16, help="frames per snippet (one frame encoded per snippet)")
    _add_extract_opts(p, "views per frame: 1 (centre) or 5/10 (centre, 4 corners[, flipped])")
    _add_output(p)
    p.add_argument("--retry-failed", action="store_true", help="retry videos that failed in an earlier run")
    p.add_argument("--inject-encoder-exit", action="append", default=None, metavar="VIDEO_ID:MARKER",
                   help=argparse.SUPPRESS)  # fault injection for bench/soak.py: an encoder dies once
    _add_clip(p)
    _add_ray(p)

    p = sub.add_parser("train", formatter_class=fmt, help="Ray Train distributed training + MLflow registry")
    p.add_argument("--train", required=True, help="training feature set (Parquet file or directory)")
    p.add_argument("--eval", default=None, help="held-out feature set evaluated each epoch (needs --gt)")
    p.add_argument("--eval-crop", type=int, default=None,
                   help="crop of the evaluation set to evaluate (default: the lowest crop it holds)")
    p.add_argument("--gt", default=None, help="ground truth: Parquet/CSV of video_id,start_frame,end_frame[,label]")
    p.add_argument("--preset", default=None, choices=["ucf", "xd", "custom"],
                   help="the official settings to start from (default: ucf, or the --config file's)")
    p.add_argument("--config", default=None,
                   help="JSON/YAML file of VadConfig fields: with 'preset' (and 'classes' for custom) it "
                        "overrides that preset's defaults; with 'class_keys' it is a whole config. Flags "
                        "given here override the file")
    p.add_argument("--classes", default=None,
                   help="custom preset: comma-separated classes, normal first (e.g. normal,fire,fall)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--visual-length", type=int, default=None, help="override the preset's visual_length (256)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker")
    p.add_argument("--max-steps-per-epoch", type=int, default=None,
                   help="cut each epoch to this many steps (smoke runs; default: every video once)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="rows per forward/backward pass on a worker; gradients are accumulated to the same "
                        "step in less memory (default: the worker's whole batch at once)")
    p.add_argument("--storage", default="./runs", help="Ray Train storage path (checkpoints; resume)")
    p.add_argument("--run-name", default="vadclip", help="run name; re-running the same name resumes it")
    p.add_argument("--metric", default=None,
                   help="model selection metric (default: auc for ucf, ap for xd; ap_align for xd with "
                        "--recipe official)")
    p.add_argument("--recipe", default="vadclip", choices=["vadclip", "official"],
                   help="vadclip: evaluate once per epoch, keep the best; official: the official loops — UCF "
                        "evaluates every 1,280 samples, and the best model so far is reloaded at each epoch end")
    _add_tracking(p)
    p.add_argument("--experiment", default="vadclip", help="MLflow experiment")
    p.add_argument("--register", default=None, help="register the best model under this name")
    p.add_argument("--alias", default="champion", help="alias moved to the new version when it beats the current one")
    p.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    p.add_argument("--allow-feature-mismatch", action="store_true",
                   help="evaluate on --eval features whose provenance differs from --train's (recorded as an MLflow "
                        "tag; default: refused in one line, exit 2)")
    _add_clip(p)
    _add_ray(p)

    p = sub.add_parser("score", formatter_class=fmt, help="score an archive with a registered model")
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS, another MLflow model URI, or a checkpoint file (vadclip or official)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="feature set to score")
    src.add_argument("--videos", help="raw videos (manifest/dir/glob; labels optional), extracted first with "
                                      "the model's CLIP")
    p.add_argument("--out", required=True, help="output directory (scores/, score_errors/, report/)")
    p.add_argument("--gt", default=None, help="ground truth intervals → AUC/AP/mAP")
    p.add_argument("--crop", type=int, default=None, help="crop to score (default: the lowest crop present)")
    p.add_argument("--threshold", type=float, default=0.5, help="snippet anomaly threshold for events")
    p.add_argument("--merge-gap", type=int, default=1, help="merge events this many snippets apart")
    p.add_argument("--min-snippets", type=int, default=1, help="shortest event kept (snippets)")
    p.add_argument("--num-scorers", type=int, default=1, help="size of the scoring actor pool")
    p.add_argument("--max-plots", type=int, default=50,
                   help="videos given a page in the report: flagged ones first (with key frames), then by score")
    p.add_argument("--experiment", default="vadclip-score", help="MLflow experiment")
    p.add_argument("--allow-feature-mismatch", action="store_true", help=_MISMATCH_HELP)
    _add_tracking(p)
    _add_extract_opts(p, "with --videos: views per frame extracted (score one with --crop)")
    _add_output(p)
    _add_ray(p)

    p = sub.add_parser("report", formatter_class=fmt,
                       help="(re)build the review report of a scoring output (OUT/report/index.html)")
    p.add_argument("out", help="the scoring job's --out (holding scores/ and score_summary.json); a path or URI")
    p.add_argument("--gt", default=None, help="ground truth intervals, shaded on the timelines")
    p.add_argument("--max-plots", type=int, default=50,
                   help="videos given a page: flagged ones first (with key frames), then by score")

    p = sub.add_parser("evaluate", formatter_class=fmt, help="metrics of a model on a feature set + ground truth")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS or a checkpoint file (vadclip or official)")
    p.add_argument("--features", required=True, help="feature set")
    p.add_argument("--gt", required=True, help="ground truth intervals (Parquet/CSV)")
    p.add_argument("--crop", type=int, default=None, help="crop to evaluate (default: the lowest crop present)")
    p.add_argument("--allow-feature-mismatch", action="store_true", help=_MISMATCH_HELP)
    _add_tracking(p)

    p = sub.add_parser("compare-features", formatter_class=fmt,
                       help="how close two feature sets are (per-video cosine, relative L2) and where they came from")
    p.add_argument("a", help="a feature set (e.g. your own extraction)")
    p.add_argument("b", help="another (e.g. the released features, imported with import-official)")
    p.add_argument("--model", default=None, help="also the metrics of this model on each set (needs --gt)")
    p.add_argument("--gt", default=None, help="ground truth for --model")
    p.add_argument("--crop", type=int, default=None, help="crop for --model (default: the lowest both hold)")
    p.add_argument("--worst", type=int, default=5, help="how many of the least similar videos to list")
    _add_tracking(p)

    p = sub.add_parser("import-official", formatter_class=fmt,
                       help="official VadCLIP features (CSV path,label + NAME__K.npy) → Parquet; or convert annotations")
    p.add_argument("--csv", help="official list, e.g. ucf_CLIP_rgb.csv")
    p.add_argument("--root", action="append", default=[], help="directory holding the .npy files (repeatable)")
    p.add_argument("--preset", default="ucf", choices=["ucf", "xd"], help="label space used to check labels")
    p.add_argument("--crops", default=None, help="comma-separated crop indices to keep (default: all)")
    p.add_argument("--fps", type=float, default=None, help="fps to record (default: 30 ucf / 24 xd)")
    p.add_argument("--out", required=True, help="output Parquet file (or ground-truth file with --annotations)")
    p.add_argument("--annotations", default=None,
                   help="convert Temporal_Anomaly_Annotation.txt (ucf) or annotations_multiclasses.txt / "
                        "annotations.txt (xd) to a ground-truth table (the multiclass file gives the "
                        "official fine-grained mAP ground truth)")

    p = sub.add_parser("register-official", formatter_class=fmt,
                       help="register a model file (an official model_ucf.pth / model_xd.pth too) in MLflow")
    p.add_argument("checkpoint", help="model file: official VadCLIP .pth or a vadclip checkpoint")
    p.add_argument("--name", required=True, help="registered model name (score it as models:/NAME@ALIAS)")
    p.add_argument("--alias", default="champion", help="alias set on the new version")
    _add_tracking(p)

    p = sub.add_parser("sample-videos", formatter_class=fmt,
                       help="write small H.264 videos with planted anomalies + manifest.csv + gt.parquet")
    p.add_argument("out", help="directory for the videos, manifest.csv (path,label,video_id) and gt.parquet")
    p.add_argument("--normal", type=int, default=4, help="videos without an anomaly")
    p.add_argument("--abnormal", type=int, default=4, help="videos with one planted anomalous event")
    p.add_argument("--seed", type=int, default=0, help="random seed (different seeds give different videos)")

    p = sub.add_parser("demo", formatter_class=fmt,
                       help="generate videos → extract → train → register → score, all local")
    p.add_argument("--workdir", default="./vadclip_demo", help="where videos, features, runs and scores go")
    p.add_argument("--train-videos", type=int, default=24, help="training videos (half with planted anomalies)")
    p.add_argument("--val-videos", type=int, default=8,
                   help="validation videos: the epoch is chosen on them (half with planted anomalies)")
    p.add_argument("--test-videos", type=int, default=8,
                   help="held-out test videos, used for nothing but the figures printed (half with planted anomalies)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip model name")
    p.add_argument("--clip-pretrained", default=None,
                   help="pretrained tag or local weights file (default: a tiny random-init CLIP, offline)")
    return ap


def _run(a) -> dict:
    log = logging.getLogger("vadclip").info
    if a.cmd == "extract":
        from vadclip.jobs.extract import run_extract

        opts = _extract_options(a, **_clip_settings(a))
        opts.snippet_len = a.snippet_len
        opts.exit_once_on = [v.rsplit(":", 1) for v in a.inject_encoder_exit or []] or None
        return run_extract(a.source, a.out, opts, retry_failed=a.retry_failed, address=a.address, log=log)
    if a.cmd == "train":
        from vadclip.jobs.train import TrainOptions, run_train

        cfg = _train_config(a)
        opts = TrainOptions(storage=a.storage, run_name=a.run_name, num_workers=a.num_workers, use_gpu=a.use_gpu,
                            cpus_per_worker=a.cpus_per_worker, metric=a.metric, recipe=a.recipe,
                            eval_crop=a.eval_crop, max_failures=a.max_failures, register_name=a.register,
                            alias=a.alias, experiment=a.experiment, tracking_uri=a.tracking_uri,
                            address=a.address, max_steps_per_epoch=a.max_steps_per_epoch,
                            micro_batch=a.micro_batch, allow_feature_mismatch=a.allow_feature_mismatch)
        return run_train(a.train, cfg, eval_path=a.eval, gt_path=a.gt, opts=opts, log=log)
    if a.cmd == "score":
        from vadclip.jobs.score import ScoreOptions, run_score

        opts = ScoreOptions(threshold=a.threshold, merge_gap=a.merge_gap, min_snippets=a.min_snippets,
                            num_scorers=a.num_scorers, crop=a.crop, rows_per_file=a.rows_per_file,
                            flush_seconds=a.flush_seconds, max_plots=a.max_plots,
                            allow_feature_mismatch=a.allow_feature_mismatch)
        return run_score(a.model, a.out, features=a.features, videos=a.videos, gt_path=a.gt, opts=opts,
                         extract_opts=_extract_options(a), tracking_uri=a.tracking_uri,
                         experiment=a.experiment, address=a.address, log=log)
    if a.cmd == "report":
        from vadclip.io.parts import part_files
        from vadclip.report.html import build_report
        from vadclip.io.storage import absolute, join

        out = absolute(a.out)
        if not part_files(join(out, "scores")):
            raise InputError(f"{out}: no scores here (expected {join(out, 'scores')}/part-*.parquet from "
                             "`vadclip score --out`)")
        return build_report(out, gt_path=a.gt, top_n=a.max_plots)
    if a.cmd == "evaluate":
        from vadclip.io.features import check_feature_set, read_feature_rows
        from vadclip.metrics.evaluate import evaluate
        from vadclip.io.gt import check_matches, read_gt
        from vadclip.tracking.registry import load_scoring_model
        from vadclip.jobs.score import check_fit

        gt = read_gt(a.gt)
        model = load_scoring_model(a.model, a.tracking_uri)
        fs = check_feature_set(a.features, model.embed_dim, crop=a.crop)
        mismatch = check_fit(model.cfg, a.features, f"the model {a.model}", a.allow_feature_mismatch, log)
        crop = fs["crops"][0] if a.crop is None else a.crop
        rows = [r for r in read_feature_rows(a.features) if r["crop"] == crop]
        check_matches(gt, a.gt, [r["video_id"] for r in rows], f"the videos of {a.features}")
        return dict(evaluate(model, rows, gt, model.cfg), crop=crop, videos=len(rows),
                    **({"feature_mismatch": mismatch} if mismatch else {}))
    if a.cmd == "compare-features":
        from vadclip.metrics.compare import compare_features, metrics_side_by_side, table
        from vadclip.io.storage import absolute

        if a.model and not a.gt:
            raise InputError("compare-features --model needs --gt (the metrics are computed against ground truth)")
        a.a, a.b = absolute(a.a), absolute(a.b)
        out = compare_features(a.a, a.b, a.worst)
        if a.model:
            from vadclip.io.gt import read_gt
            from vadclip.tracking.registry import load_scoring_model

            model = load_scoring_model(a.model, a.tracking_uri)
            out["metrics"] = metrics_side_by_side(model, a.a, a.b, read_gt(a.gt), a.crop)
        print(table(out), file=sys.stderr)
        return out
    if a.cmd == "import-official":
        if a.annotations:
            from vadclip.io.gt import convert_ucf_annotations, convert_xd_annotations, write_gt

            rows = (convert_ucf_annotations if a.preset == "ucf" else convert_xd_annotations)(a.annotations)
            write_gt(rows, a.out)
            return {"intervals": len(rows), "out": a.out}
        if not a.csv:
            raise InputError("import-official needs --csv (features) or --annotations (ground truth)")
        from vadclip.io.features import import_official

        crops = [int(c) for c in a.crops.split(",")] if a.crops else None
        fps = a.fps or (30.0 if a.preset == "ucf" else 24.0)
        return import_official(a.csv, a.out, VadConfig.from_preset(a.preset), roots=a.root, crops=crops, fps=fps)
    if a.cmd == "register-official":
        from vadclip.tracking.registry import register_model_file

        return register_model_file(a.checkpoint, a.name, a.alias, a.tracking_uri, log=log)
    if a.cmd == "sample-videos":
        from vadclip.io.gt import write_gt
        from vadclip.video.samples import make_sample_set, write_manifest

        man, gt = make_sample_set(a.out, a.normal, a.abnormal, seed=a.seed, prefix=f"s{a.seed}_")
        write_manifest(man, os.path.join(a.out, "manifest.csv"))
        write_gt(gt, os.path.join(a.out, "gt.parquet"))
        return {"videos": len(man), "manifest": os.path.join(a.out, "manifest.csv"),
                "gt": os.path.join(a.out, "gt.parquet")}
    from vadclip.cli.demo import run_demo

    pre = None if str(a.clip_pretrained).lower() == "none" else a.clip_pretrained
    return run_demo(a.workdir, a.train_videos, a.test_videos, a.epochs, a.num_workers,
                    clip=ClipSpec(a.clip_model, pre) if pre else None, n_val=a.val_videos, log=log)


def _setup_logging() -> None:
    """vadclip's own progress lines on stderr; other libraries stay at their warnings."""
    logger = logging.getLogger("vadclip")
    if not logger.handlers:
        class _Stderr(logging.StreamHandler):   # whatever sys.stderr is now (tests swap it)
            @property
            def stream(self):
                return sys.stderr

            @stream.setter
            def stream(self, _):
                pass

        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command; a problem of the input or configuration is one line on stderr
    and exit code 2 (as argparse does for bad options), a problem of the environment one
    line and exit code 3, never a traceback."""
    a = build_parser().parse_args(argv)
    _setup_logging()
    try:
        # stdout carries the JSON result alone: what Ray prints there while the job runs
        # (its workers' and raylet's lines) goes to stderr with the log
        with contextlib.redirect_stdout(sys.stderr):
            s = _run(a)
    except InputError as e:
        print(f"vadclip {a.cmd}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except EnvironmentProblem as e:
        print(f"vadclip {a.cmd}: error (environment): {one_line(e)}", file=sys.stderr)
        return 3
    print(json.dumps(s, indent=2, default=str), flush=True)
    return 0


def entry(argv: Optional[List[str]] = None) -> None:
    """The ``vadclip`` command (and ``jobs/*.py``): :func:`main`, then whatever Ray still
    prints while the process winds down goes to stderr, after the JSON result."""
    rc = main(argv)
    sys.stdout.flush()
    sys.stdout = sys.stderr
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    entry()
