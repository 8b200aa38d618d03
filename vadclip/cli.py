"""``vadclip`` command line: extract | train | score | evaluate | import-official | demo.

The ``jobs/*.py`` entry points for ``ray job submit`` call the same functions."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .config import VadConfig, tiny_clip_kwargs


def _add_clip(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CLIP backbone (open_clip)")
    g.add_argument("--clip-model", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    g.add_argument("--clip-pretrained", default="openai",
                   help="pretrained tag (e.g. openai), a local weights file, or 'none' for random init")
    g.add_argument("--tiny-clip", action="store_true",
                   help="use a tiny random-init CLIP (offline; for smoke tests, not real detection)")


def _clip_settings(a) -> dict:
    if a.tiny_clip:
        return {"clip_model": a.clip_model, "clip_pretrained": None, "clip_model_kwargs": tiny_clip_kwargs(32)}
    pre = None if str(a.clip_pretrained).lower() == "none" else a.clip_pretrained
    return {"clip_model": a.clip_model, "clip_pretrained": pre, "clip_model_kwargs": {}}


def _add_ray(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS as set by `ray job submit`, else a local Ray)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vadclip", description=__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("extract", formatter_class=fmt,
                       help="raw videos → CLIP snippet features (Parquet), resumable, errors recorded")
    p.add_argument("source", help="manifest (CSV/Parquet with path[,label,video_id]), a directory, or a glob")
    p.add_argument("--out", required=True, help="output directory (features/, errors/, summary.json)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 5, 10],
                   help="views per frame: 1 (centre) or 5/10 (centre, 4 corners[, flipped])")
    p.add_argument("--snippet-len", type=int, default=16, help="frames per snippet (one frame encoded per snippet)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder forward pass")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="encoder precision (auto: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--num-encoders", type=int, default=1, help="size of the encoder actor pool")
    p.add_argument("--gpus-per-encoder", type=float, default=None,
                   help="GPUs per encoder actor (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--encoder-threads", type=int, default=None,
                   help="CPU-only: torch threads per encoder actor (default: the node's cores / --num-encoders)")
    p.add_argument("--retry-failed", action="store_true", help="retry videos that failed in an earlier run")
    _add_clip(p)
    _add_ray(p)

    p = sub.add_parser("train", formatter_class=fmt, help="Ray Train distributed training + MLflow registry")
    p.add_argument("--train", required=True, help="training feature set (Parquet file or directory)")
    p.add_argument("--eval", default=None, help="held-out feature set evaluated each epoch")
    p.add_argument("--gt", default=None, help="ground truth: Parquet/CSV of video_id,start_frame,end_frame[,label]")
    p.add_argument("--preset", default="ucf", choices=["ucf", "xd", "custom"], help="official defaults to use")
    p.add_argument("--classes", default=None,
                   help="custom preset: comma-separated classes, normal first (e.g. normal,fire,fall)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--visual-length", type=int, default=None, help="override visual_length (256)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker")
    p.add_argument("--storage", default="./runs", help="Ray Train storage path (checkpoints; resume)")
    p.add_argument("--run-name", default="vadclip", help="run name; re-running the same name resumes it")
    p.add_argument("--metric", default=None, help="model selection metric (default auc for ucf, ap for xd)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///<storage>/mlflow.db)")
    p.add_argument("--experiment", default="vadclip", help="MLflow experiment")
    p.add_argument("--register", default=None, help="register the best model under this name")
    p.add_argument("--alias", default="champion", help="alias moved to the new version when it beats the current one")
    p.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    _add_clip(p)
    _add_ray(p)

    p = sub.add_parser("score", formatter_class=fmt, help="score an archive with a registered model")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, another MLflow model URI, or a checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="feature set to score")
    src.add_argument("--videos", help="raw videos (manifest/dir/glob), extracted first with the model's CLIP")
    p.add_argument("--out", required=True, help="output directory (scores/, score_errors/, plots/)")
    p.add_argument("--gt", default=None, help="ground truth intervals → AUC/AP/mAP")
    p.add_argument("--threshold", type=float, default=0.5, help="snippet anomaly threshold for events")
    p.add_argument("--merge-gap", type=int, default=1, help="merge events this many snippets apart")
    p.add_argument("--min-snippets", type=int, default=1, help="shortest event kept (snippets)")
    p.add_argument("--num-scorers", type=int, default=1, help="size of the scoring actor pool")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    _add_ray(p)

    p = sub.add_parser("evaluate", formatter_class=fmt, help="metrics of a model on a feature set + ground truth")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS or a checkpoint")
    p.add_argument("--features", required=True, help="feature set")
    p.add_argument("--gt", required=True, help="ground truth intervals (Parquet/CSV)")
    p.add_argument("--crop", type=int, default=0, help="crop index to evaluate")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")

    p = sub.add_parser("import-official", formatter_class=fmt,
                       help="official VadCLIP features (CSV path,label + NAME__K.npy) → Parquet; or convert annotations")
    p.add_argument("--csv", help="official list, e.g. ucf_CLIP_rgb.csv")
    p.add_argument("--root", action="append", default=[], help="directory holding the .npy files (repeatable)")
    p.add_argument("--preset", default="ucf", choices=["ucf", "xd"], help="label space used to check labels")
    p.add_argument("--crops", default=None, help="comma-separated crop indices to keep (default all)")
    p.add_argument("--fps", type=float, default=None, help="fps to record (default 30 ucf / 24 xd)")
    p.add_argument("--out", required=True, help="output Parquet file (or ground-truth file with --annotations)")
    p.add_argument("--annotations", default=None,
                   help="convert Temporal_Anomaly_Annotation.txt (ucf) / annotations.txt (xd) to a gt table")

    p = sub.add_parser("demo", formatter_class=fmt,
                       help="generate videos → extract → train → register → score, all local")
    p.add_argument("--workdir", default="./vadclip_demo", help="where videos, features, runs and scores go")
    p.add_argument("--train-videos", type=int, default=24, help="training videos (half with planted anomalies)")
    p.add_argument("--test-videos", type=int, default=8, help="held-out videos (half with planted anomalies)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip model name")
    p.add_argument("--clip-pretrained", default=None,
                   help="pretrained tag or local weights file; default: a tiny random-init CLIP (offline)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd == "extract":
        from .extract import ExtractOptions, run_extract

        opts = ExtractOptions(snippet_len=a.snippet_len, crops=a.crops, batch_size=a.batch_size,
                              precision=a.precision, num_encoders=a.num_encoders,
                              gpus_per_encoder=a.gpus_per_encoder, encoder_threads=a.encoder_threads,
                              **_clip_settings(a))
        s = run_extract(a.source, a.out, opts, retry_failed=a.retry_failed, address=a.address)
    elif a.cmd == "train":
        from .train_job import run_train

        over = {k: v for k, v in {"epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size,
                                  "visual_length": a.visual_length}.items() if v is not None}
        if a.preset == "custom":
            if not a.classes:
                raise SystemExit("--preset custom needs --classes normal,abnormal1,...")
            over["classes"] = a.classes.split(",")
        cfg = VadConfig.from_preset(a.preset, **_clip_settings(a), **over)
        s = run_train(a.train, cfg, a.storage, a.run_name, a.eval, a.gt, a.num_workers, a.use_gpu,
                      a.cpus_per_worker, a.metric, a.tracking_uri, a.experiment, a.register, a.alias,
                      a.max_failures, address=a.address)
    elif a.cmd == "score":
        from .score import ScoreOptions, run_score

        s = run_score(a.model, a.out, features=a.features, videos=a.videos, gt_path=a.gt,
                      opts=ScoreOptions(threshold=a.threshold, merge_gap=a.merge_gap,
                                        min_snippets=a.min_snippets, num_scorers=a.num_scorers),
                      tracking_uri=a.tracking_uri, address=a.address)
    elif a.cmd == "evaluate":
        from .features import read_feature_rows
        from .gt import read_gt
        from .registry import load_scoring_model
        from .training import evaluate

        model = load_scoring_model(a.model, a.tracking_uri)
        rows = [r for r in read_feature_rows(a.features) if r["crop"] == a.crop]
        s = evaluate(model, rows, read_gt(a.gt), model.cfg)
    elif a.cmd == "import-official":
        if a.annotations:
            from .gt import convert_ucf_annotations, convert_xd_annotations, write_gt

            rows = (convert_ucf_annotations if a.preset == "ucf" else convert_xd_annotations)(a.annotations)
            write_gt(rows, a.out)
            s = {"intervals": len(rows), "out": a.out}
        else:
            if not a.csv:
                raise SystemExit("import-official needs --csv (features) or --annotations (ground truth)")
            from .features import import_official

            crops = [int(c) for c in a.crops.split(",")] if a.crops else None
            fps = a.fps or (30.0 if a.preset == "ucf" else 24.0)
            s = import_official(a.csv, a.out, VadConfig.from_preset(a.preset), roots=a.root, crops=crops, fps=fps)
    elif a.cmd == "demo":
        from .demo import run_demo

        s = run_demo(a.workdir, a.train_videos, a.test_videos, a.epochs, a.num_workers,
                     clip_model=a.clip_model, clip_pretrained=a.clip_pretrained)
    print(json.dumps(s, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
