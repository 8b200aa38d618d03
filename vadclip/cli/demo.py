"""``vadclip demo``: generate labelled H.264 videos with planted anomalies, then
extract → train → register → calibrate → score on a local Ray with a sqlite MLflow store.

Three disjoint sets of videos: training, validation (the epoch is chosen on it) and a
held-out test set used for nothing but the figures printed at the end."""
from __future__ import annotations

import logging
import re
import os
import time
from typing import Any, Dict, Optional

from vadclip.model.config import ClipSpec, VadConfig

DEMO_CLASSES = ["Normal", "Explosion", "Fighting", "RoadAccidents"]


# what each of the demo's three extractions would say again, said once
_SAID_ONCE = ("[extract] no GPU in the cluster", "[extract] precision auto: ", "[extract] torchcodec cannot decode here")


def _once_per_demo(log):
    said = set()

    def once(line: str) -> None:
        if re.match(r"\[extract\] \d+ videos: ", line):
            return      # the demo's own step lines and each extraction's "done" line say it
        key = next((p + line[len(p):].split(" ")[0] for p in _SAID_ONCE if line.startswith(p)), None)
        if key is not None:
            if key in said:
                return
            said.add(key)
        log(line)
    return once


def run_demo(workdir: str = "./vadclip_demo", n_train: int = 24, n_test: int = 8, epochs: int = 12,
             num_workers: int = 2, clip: Optional[ClipSpec] = None, n_val: int = 8, log=None) -> Dict[str, Any]:
    log = _once_per_demo(log or logging.getLogger("vadclip").info)
    from vadclip.jobs.extract import ExtractOptions, feature_dir, run_extract
    from vadclip.io.gt import write_gt
    from vadclip.jobs.cluster import ensure_ray
    from vadclip.video.samples import make_sample_set, write_manifest
    from vadclip.jobs.calibrate import CalibrateOptions, run_calibrate
    from vadclip.jobs.score import ScoreOptions, run_score
    from vadclip.jobs.train import run_train

    t0 = time.time()
    workdir = os.path.abspath(workdir)
    if clip is not None and clip.pretrained:
        log(f"[demo] CLIP backbone: {clip.model} with pretrained weights {clip.pretrained!r}")
    else:
        clip = ClipSpec.tiny()
        log("[demo] NOTE: using a small RANDOM-INIT CLIP (no download, runs offline). The pipeline is the "
            "real one, but features carry no pretrained semantics; pass --clip-pretrained openai (or a "
            "local weights file) for real ViT-B-16 features.")
    # a 2-core machine: more logical CPUs than cores so Train workers and Data tasks coexist
    ensure_ray(num_cpus=max(4, os.cpu_count() or 1))

    log("[demo] 1/4 generating sample videos (training, validation, held-out test)")
    sets = {}
    for name, n, seed in (("train", n_train, 1), ("val", n_val, 3), ("test", n_test, 2)):
        man, gt = make_sample_set(os.path.join(workdir, "videos", name), n // 2, n - n // 2, seed=seed, prefix=name)
        write_manifest(man, os.path.join(workdir, f"{name}.csv"))
        write_gt(gt, os.path.join(workdir, f"{name}_gt.parquet"))
        sets[name] = (os.path.join(workdir, f"{name}.csv"), os.path.join(workdir, f"{name}_gt.parquet"))

    log("[demo] 2/4 extracting CLIP snippet features of the training and validation videos (Ray Data)")
    eo = ExtractOptions(batch_size=32, clip=clip)
    extracted = {name: run_extract(sets[name][0], os.path.join(workdir, "extract", name), eo, log=log)
                 for name in ("train", "val")}

    log(f"[demo] 3/4 training {epochs} epochs (Ray Train; the epoch chosen on the validation videos) and "
        "registering the model (MLflow)")
    cfg = VadConfig.from_preset("custom", classes=DEMO_CLASSES, visual_length=32, attn_window=8, visual_layers=1,
                           lr=1e-3, batch_size=4, epochs=epochs, milestones=[max(1, epochs - 2)],
                           contrast_weight=1e-1, clip=clip)
    tracking_uri = f"sqlite:///{os.path.join(workdir, 'mlflow.db')}"
    tr = run_train(feature_dir(os.path.join(workdir, "extract", "train")), cfg, os.path.join(workdir, "runs"),
                   run_name="demo", eval_path=feature_dir(os.path.join(workdir, "extract", "val")),
                   gt_path=sets["val"][1], num_workers=num_workers, cpus_per_worker=1.0, tracking_uri=tracking_uri,
                   experiment="vadclip-demo", register_name="vadclip-demo", alias="champion", epoch_lines=False,
                   log=log)

    log("[demo] 4/4 choosing the operating point on the validation videos (at most 1 false alarm per hour of "
        "normal footage; stored on the model version), then scoring the held-out test videos from raw files "
        "with models:/vadclip-demo@champion at that operating point")
    cal = run_calibrate("models:/vadclip-demo@champion", feature_dir(os.path.join(workdir, "extract", "val")),
                        gt_path=sets["val"][1], opts=CalibrateOptions(target_fa_per_hour=1.0),
                        tracking_uri=tracking_uri, experiment="vadclip-demo", log=log)
    sc = run_score("models:/vadclip-demo@champion", os.path.join(workdir, "scores"),
                   videos=sets["test"][0], gt_path=sets["test"][1], opts=ScoreOptions(),
                   tracking_uri=tracking_uri, experiment="vadclip-demo", log=log)
    best = tr["best_metrics"]
    out = {
        "heldout_auc": sc.get("auc"), "heldout_ap": sc.get("ap"), "heldout_map_avg": sc.get("map_avg"),
        "validation_best": {k: best.get(k) for k in ("epoch", "auc", "ap")},
        "videos": {"train": n_train, "validation": n_val, "test": n_test},
        "decoders": sorted({d for s in [*extracted.values(), sc.get("extract") or {}] for d in s.get("decoders", [])}),
        "registered": f"models:/vadclip-demo@champion (version {tr.get('registered_version')})",
        "operating_point": {"threshold": cal["threshold"], "stored": cal["stored"],
                            "validation_false_alarms_per_hour": cal["operating_point"]["on_validation"][
                                "false_alarms_per_hour"],
                            "heldout_false_alarms_per_hour": sc.get("false_alarms_per_hour"),
                            "heldout_event_recall": sc.get("event_recall")},
        "scores": sc["output"], "report": sc["report"],
        "mlflow": tracking_uri, "random_init_clip": not clip.pretrained,
        "elapsed_s": round(time.time() - t0, 1),
    }
    log(f"[demo] validation (chose epoch {best.get('epoch')} of {epochs}): frame AUC {best.get('auc', float('nan')):.4f}"
        f"  AP {best.get('ap', float('nan')):.4f}")
    log(f"[demo] held-out test ({n_test} videos used for nothing else): frame AUC {out['heldout_auc']:.4f}  "
        f"AP {out['heldout_ap']:.4f}  mAP {out['heldout_map_avg']:.2f}  (random-init CLIP: {out['random_init_clip']})")
    log(f"[demo] operating point: threshold {cal['threshold']:.4g} (chosen on validation for ≤ 1 false alarm "
        f"per hour); on the held-out test: {sc.get('false_alarms_per_hour', float('nan')):.3g} false alarms per "
        f"hour of normal footage, event recall {sc.get('event_recall', float('nan')):.3g}")
    log(f"[demo] decoded with {', '.join(out['decoders']) or '-'}; scores: {out['scores']}  MLflow: {out['mlflow']} "
        f"(mlflow ui --backend-store-uri {tracking_uri})")
    log(f"[demo] review report: {out['report']}")
    return out
