"""``vadclip`` command line: extract | train | score | calibrate | report | evaluate |
compare-features | import-release | register-model | sample-videos | demo.

Each command's flags are generated from the option dataclass of the library function it
calls (``ExtractOptions``, ``TrainOptions``, ``ScoreOptions``); each command is a short
handler calling that function.  The ``jobs/*.py`` entry points for ``ray job submit``
run the same commands."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import List, Optional

from vadclip.model.config import ClipSpec, VadConfig
from vadclip.errors import EnvironmentProblem, InputError, environment_cause, one_line
from vadclip.options import ADDRESS_HELP, MISMATCH_HELP, TRACKING_URI_HELP, add_options, options_from


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default once: not for required options, not when it is None
    or False, and not when the help text already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or action.default in (None, False, argparse.SUPPRESS) or "default" in text
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


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
    over = {k: getattr(a, "cfg_" + k) for k in ("epochs", "lr", "batch_size", "visual_length")
            if getattr(a, "cfg_" + k) is not None}
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
    p.add_argument("--address", default=None, help=ADDRESS_HELP)


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)


def build_parser() -> argparse.ArgumentParser:
    from vadclip.jobs.calibrate import CalibrateOptions
    from vadclip.jobs.extract import ExtractOptions
    from vadclip.jobs.score import ScoreOptions
    from vadclip.jobs.train import TrainOptions

    ap = argparse.ArgumentParser(prog="vadclip", description=__doc__, formatter_class=_HelpFormatter,
                                 allow_abbrev=False)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def command(name, handler, help, aliases=()):
        # no abbreviated flags: a renamed flag must fail, not match a longer one silently
        p = sub.add_parser(name, formatter_class=_HelpFormatter, help=help, aliases=list(aliases),
                           allow_abbrev=False)
        p.set_defaults(handler=handler)
        p.add_argument("--verbose", action="store_true",
                       help="everything Ray, Ray Data, MLflow and open_clip log at INFO, and their progress bars")
        return p

    p = command("extract", _extract, "raw videos → CLIP snippet features (Parquet), resumable, errors recorded")
    p.add_argument("source", help="manifest (CSV/Parquet with path[,label,video_id]), a directory, or a glob")
    p.add_argument("--out", required=True, help="output directory (features/, errors/, summary.json)")
    add_options(p, ExtractOptions)
    p.add_argument("--retry-failed", action="store_true", help="retry videos that failed in an earlier run")
    _add_clip(p)
    _add_ray(p)

    p = command("train", _train, "Ray Train distributed training + MLflow registry")
    p.add_argument("--train", required=True, help="training feature set (Parquet file or directory)")
    p.add_argument("--eval", default=None, help="held-out feature set evaluated each epoch (needs --gt)")
    p.add_argument("--gt", default=None, help="ground truth: Parquet/CSV of video_id,start_frame,end_frame[,label]")
    p.add_argument("--preset", default=None, choices=["ucf", "xd", "custom"],
                   help="the official settings to start from (default: ucf, or the --config file's)")
    p.add_argument("--config", default=None,
                   help="JSON/YAML file of VadConfig fields: with 'preset' (and 'classes' for custom) it "
                        "overrides that preset's defaults; with 'class_keys' it is a whole config. Flags "
                        "given here override the file")
    p.add_argument("--classes", default=None,
                   help="custom preset: comma-separated classes, normal first (e.g. normal,fire,fall)")
    for name, what in (("epochs", int), ("lr", float), ("batch_size", int), ("visual_length", int)):
        p.add_argument("--" + name.replace("_", "-"), type=what, default=None, dest="cfg_" + name,
                       help=f"override the preset's {name}")
    add_options(p, TrainOptions)
    _add_clip(p)

    p = command("score", _score, "score an archive with a registered model")
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS, another MLflow model URI, or a checkpoint file (vadclip or official)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="feature set to score")
    src.add_argument("--videos", help="raw videos (manifest/dir/glob; labels optional), extracted first with "
                                      "the model's CLIP")
    p.add_argument("--out", required=True, help="output directory (scores/, score_errors/, report/)")
    p.add_argument("--gt", default=None, help="ground truth intervals → AUC/AP/mAP")
    add_options(p, ScoreOptions)
    p.add_argument("--experiment", default="vadclip-score", help="MLflow experiment")
    _add_tracking(p)
    add_options(p, ExtractOptions, exclude=["snippet_len"],
                help={"crops": "with --videos: views per frame extracted (score one with --crop)"})
    _add_ray(p)

    p = command("calibrate", _calibrate,
                "choose a model's operating point (threshold and event rule) on validation footage; stored with "
                "the model, used by score")
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS or models:/NAME/V (the operating point is stored on that version), or a "
                        "model file (stored beside it)")
    p.add_argument("--features", required=True, help="validation feature set (e.g. a week of one camera's "
                                                     "ordinary footage, or labelled validation videos)")
    p.add_argument("--gt", default=None, help="ground-truth intervals of the validation videos (needed for "
                                              "--target-recall and --max-f1)")
    add_options(p, CalibrateOptions)
    p.add_argument("--experiment", default="vadclip-calibrate", help="MLflow experiment of the calibration run")
    _add_tracking(p)

    p = command("report", _report, "(re)build the review report of a scoring output (OUT/report/index.html)")
    p.add_argument("out", help="the scoring job's --out (holding scores/ and score_summary.json); a path or URI")
    p.add_argument("--gt", default=None, help="ground truth intervals, shaded on the timelines")
    add_options(p, ScoreOptions, only=["max_plots"])

    p = command("evaluate", _evaluate, "metrics of a model on a feature set + ground truth")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS or a checkpoint file (vadclip or official)")
    p.add_argument("--features", required=True, help="feature set")
    p.add_argument("--gt", required=True, help="ground truth intervals (Parquet/CSV)")
    p.add_argument("--crop", type=int, default=None, help="crop to evaluate (default: the lowest crop present)")
    p.add_argument("--allow-feature-mismatch", action="store_true", help=MISMATCH_HELP)
    p.add_argument("--operating-point", default=None,
                   help="operating point file (from calibrate) instead of the model's own")
    _add_tracking(p)

    p = command("compare-features", _compare,
                "how close two feature sets are (per-video cosine, relative L2) and where they came from")
    p.add_argument("a", help="a feature set (e.g. your own extraction)")
    p.add_argument("b", help="another (e.g. the released features, imported with import-release)")
    p.add_argument("--model", default=None, help="also the metrics of this model on each set (needs --gt)")
    p.add_argument("--gt", default=None, help="ground truth for --model")
    p.add_argument("--crop", type=int, default=None, help="crop for --model (default: the lowest both hold)")
    p.add_argument("--worst", type=int, default=5, help="how many of the least similar videos to list")
    _add_tracking(p)

    p = command("import-release", _import_release,
                "the released VadCLIP features (CSV path,label + NAME__K.npy) → Parquet; or convert annotations")
    p.add_argument("--csv", help="the release's list, e.g. ucf_CLIP_rgb.csv")
    p.add_argument("--root", action="append", default=[], help="directory holding the .npy files (repeatable)")
    p.add_argument("--preset", default="ucf", choices=["ucf", "xd"], help="label space used to check labels")
    p.add_argument("--crops", default=None, help="comma-separated crop indices to keep (default: all)")
    p.add_argument("--fps", type=float, default=None, help="fps to record (default: 30 ucf / 24 xd)")
    p.add_argument("--out", required=True, help="output Parquet file (or ground-truth file with --annotations)")
    p.add_argument("--annotations", default=None,
                   help="convert Temporal_Anomaly_Annotation.txt (ucf) or annotations_multiclasses.txt / "
                        "annotations.txt (xd) to a ground-truth table (the multiclass file gives the "
                        "official fine-grained mAP ground truth)")

    p = command("register-model", _register_model,
                "register a model file (a vadclip checkpoint, or the release's model_ucf.pth / model_xd.pth) in MLflow")
    p.add_argument("checkpoint", help="model file: a vadclip checkpoint or an official VadCLIP .pth")
    p.add_argument("--name", required=True, help="registered model name (score it as models:/NAME@ALIAS)")
    p.add_argument("--alias", default="champion", help="alias set on the new version")
    _add_tracking(p)

    p = command("sample-videos", _sample_videos,
                "write small H.264 videos with planted anomalies + manifest.csv + gt.parquet")
    p.add_argument("out", help="directory for the videos, manifest.csv (path,label,video_id) and gt.parquet")
    p.add_argument("--normal", type=int, default=4, help="videos without an anomaly")
    p.add_argument("--abnormal", type=int, default=4, help="videos with one planted anomalous event")
    p.add_argument("--seed", type=int, default=0, help="random seed (different seeds give different videos)")

    p = command("demo", _demo, "generate videos → extract → train → register → score, all local")
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


# ------------------------------------------------------------------ the commands
def _extract(a, log) -> dict:
    from vadclip.jobs.extract import ExtractOptions, run_extract

    opts = options_from(a, ExtractOptions, **_clip_settings(a))
    return run_extract(a.source, a.out, opts, retry_failed=a.retry_failed, address=a.address, log=log)


def _train(a, log) -> dict:
    from vadclip.jobs.train import TrainOptions, run_train

    opts = options_from(a, TrainOptions)
    if opts.seeds or opts.repeats or opts.grid:
        from vadclip.jobs.seeds import run_seeds

        return run_seeds(a.train, _train_config(a), a.eval, a.gt, opts, log)
    return run_train(a.train, _train_config(a), eval_path=a.eval, gt_path=a.gt, opts=opts, log=log)


def _score(a, log) -> dict:
    from vadclip.jobs.extract import ExtractOptions
    from vadclip.jobs.score import ScoreOptions, run_score

    return run_score(a.model, a.out, features=a.features, videos=a.videos, gt_path=a.gt,
                     opts=options_from(a, ScoreOptions), extract_opts=options_from(a, ExtractOptions),
                     tracking_uri=a.tracking_uri, experiment=a.experiment, address=a.address, log=log)


def _calibrate(a, log) -> dict:
    from vadclip.jobs.calibrate import CalibrateOptions, run_calibrate

    return run_calibrate(a.model, a.features, gt_path=a.gt, opts=options_from(a, CalibrateOptions),
                         tracking_uri=a.tracking_uri, experiment=a.experiment, log=log)


def _report(a, log) -> dict:
    from vadclip.report.html import rebuild_report

    return rebuild_report(a.out, gt_path=a.gt, top_n=a.max_plots)


def _evaluate(a, log) -> dict:
    from vadclip.jobs.evaluate import run_evaluate

    return run_evaluate(a.model, a.features, a.gt, crop=a.crop, tracking_uri=a.tracking_uri,
                        allow_feature_mismatch=a.allow_feature_mismatch, operating_point=a.operating_point,
                        log=log)


def _compare(a, log) -> dict:
    from vadclip.jobs.evaluate import run_compare

    out, text = run_compare(a.a, a.b, model=a.model, gt_path=a.gt, crop=a.crop, worst=a.worst,
                            tracking_uri=a.tracking_uri)
    print(text, file=sys.stderr)
    return out


def _import_release(a, log) -> dict:
    if a.annotations:
        from vadclip.io.gt import convert_ucf_annotations, convert_xd_annotations, write_gt

        rows = (convert_ucf_annotations if a.preset == "ucf" else convert_xd_annotations)(a.annotations)
        write_gt(rows, a.out)
        return {"intervals": len(rows), "out": a.out}
    if not a.csv:
        raise InputError(f"{a.cmd} needs --csv (features) or --annotations (ground truth)")
    from vadclip.io.features import import_release

    crops = [int(c) for c in a.crops.split(",")] if a.crops else None
    fps = a.fps or (30.0 if a.preset == "ucf" else 24.0)
    return import_release(a.csv, a.out, VadConfig.from_preset(a.preset), roots=a.root, crops=crops, fps=fps)


def _register_model(a, log) -> dict:
    from vadclip.tracking.registry import register_model_file

    return register_model_file(a.checkpoint, a.name, a.alias, a.tracking_uri, log=log)


def _sample_videos(a, log) -> dict:
    from vadclip.io.gt import write_gt
    from vadclip.video.samples import make_sample_set, write_manifest

    # absolute paths: a manifest's relative paths are read relative to the manifest's folder
    man, gt = make_sample_set(os.path.abspath(a.out), a.normal, a.abnormal, seed=a.seed, prefix=f"s{a.seed}_")
    write_manifest(man, os.path.join(a.out, "manifest.csv"))
    write_gt(gt, os.path.join(a.out, "gt.parquet"))
    return {"videos": len(man), "manifest": os.path.join(a.out, "manifest.csv"),
            "gt": os.path.join(a.out, "gt.parquet")}


def _demo(a, log) -> dict:
    from vadclip.cli.demo import run_demo

    pre = None if str(a.clip_pretrained).lower() == "none" else a.clip_pretrained
    return run_demo(a.workdir, a.train_videos, a.test_videos, a.epochs, a.num_workers,
                    clip=ClipSpec(a.clip_model, pre) if pre else None, n_val=a.val_videos, log=log)


def _redacting(record: logging.LogRecord) -> bool:
    """A log line with every credential in a URI taken out (a video or output URI with a key in it)."""
    from vadclip.io.storage import redact

    record.msg, record.args = redact(record.getMessage()), None
    return True


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
        handler.addFilter(_redacting)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def quiet_libraries(verbose: bool = False) -> None:
    """By default stderr holds vadclip's own progress and results and the warnings a user
    can act on; the libraries' INFO chatter stays in Ray's log files (``/tmp/ray/session_*/logs``):
    Ray Data's execution plans and per-dataset lines, MLflow's download bars, open_clip's
    model-building lines in the workers (``VADCLIP_VERBOSE`` reaches them).  ``--verbose``
    (or ``VADCLIP_VERBOSE=1``) keeps all of it."""
    if verbose:
        os.environ["VADCLIP_VERBOSE"] = "1"
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("ray.data", "mlflow.store.db.utils", "mlflow.pyfunc", "open_clip"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _hide_passwords_in_process_title(cmd: str) -> None:
    """A URI's password given on the command line (``--tracking-uri http://u:p@host``) is
    taken out of this process's title, which ``ps`` and Ray's job table (the driver's
    entrypoint) show; said once, with the way that never shows it."""
    from vadclip.io.storage import redact

    shown = [redact(x) for x in sys.argv]
    if shown == sys.argv:
        return
    import setproctitle

    setproctitle.setproctitle(" ".join([os.path.basename(sys.executable)] + shown))
    print(f"vadclip {cmd}: note: a password in a URI on the command line is visible to other users of this "
          "machine until now; give it as MLFLOW_TRACKING_PASSWORD (with MLFLOW_TRACKING_USERNAME) instead",
          file=sys.stderr)


def _driver_memory_pool() -> None:
    """The driver's Arrow allocations from jemalloc (unless ``ARROW_DEFAULT_MEMORY_POOL``
    names one): a nightly plan reads every committed part's small columns, a few KB each,
    and pyarrow's default mimalloc kept what those reads freed in between.  Side by side
    on one archive of 200,000 recordings (``bench/noop_compare.py``, 2026-12-07) the no-op
    peaked about 40 MB lower.  Workers keep the default: they allocate large buffers."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, pa.ArrowNotImplementedError):     # a pyarrow built without it
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command; a problem of the input or configuration is one line on stderr
    and exit code 2 (as argparse does for bad options), a problem of the environment one
    line and exit code 3, never a traceback."""
    from vadclip.io.storage import redact

    a = build_parser().parse_args(argv)
    _driver_memory_pool()
    _setup_logging()
    quiet_libraries(verbose=getattr(a, "verbose", False) or os.environ.get("VADCLIP_VERBOSE") == "1")
    if argv is None:
        _hide_passwords_in_process_title(a.cmd)
    try:
        # stdout carries the JSON result alone: what Ray prints there while the job runs
        # (its workers' and raylet's lines) goes to stderr with the log
        with contextlib.redirect_stdout(sys.stderr):
            s = a.handler(a, logging.getLogger("vadclip").info)
    except InputError as e:
        print(f"vadclip {a.cmd}: error: {redact(one_line(e))}", file=sys.stderr)
        return 2
    except EnvironmentProblem as e:
        # raised in a worker it comes back as Ray's wrapper (of the same class): its own line
        print(f"vadclip {a.cmd}: error (environment): {redact(one_line(environment_cause(e) or e))}",
              file=sys.stderr)
        return 3
    except Exception as e:
        # raised in a worker (storage that kept failing under a writer, an encoder without
        # CUDA): Ray and Ray Data hand it back wrapped, the cause kept in the chain
        cause = environment_cause(e)
        if cause is None:
            raise
        print(f"vadclip {a.cmd}: error (environment): {redact(one_line(cause))}", file=sys.stderr)
        return 3
    from vadclip.io.storage import redact_all

    print(json.dumps(redact_all(s), indent=2, default=str), flush=True)
    return 0


def entry(argv: Optional[List[str]] = None) -> None:
    """The ``vadclip`` command (and ``jobs/*.py``): :func:`main`, then whatever Ray still
    prints while the process winds down goes to stderr, after the JSON result; Ray's
    lines that no user can act on stay off it (:mod:`vadclip.cli.stderr`)."""
    from vadclip.cli.stderr import quiet_ray_stderr

    args = sys.argv[1:] if argv is None else argv
    quiet_ray_stderr(verbose="--verbose" in args or os.environ.get("VADCLIP_VERBOSE") == "1")
    rc = main(argv)
    sys.stdout.flush()
    sys.stdout = sys.stderr
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    entry()
