"""vadclip: weakly supervised video anomaly detection (VadCLIP) as a Ray batch system.

The subpackages are layers; each imports only from those below it (checked in CI by
import-linter, contracts in ``pyproject.toml``):

* ``cli`` — the ``vadclip`` command and the demo;
* ``jobs`` — the Ray jobs: ``extract`` (Ray Data: decode, encode, write), ``score``
  (Ray Data), ``train`` (Ray Train), ``cluster`` (connecting to Ray);
* ``tracking`` (MLflow runs, the model registry, the pyfunc model) and ``report``
  (the HTML report of a scoring run);
* ``train`` — the framework-free training: epoch batches, the worker's shard cache,
  one step;
* ``metrics`` — frame AUC/AP, mAP@IoU, evaluating a model on a feature set;
* ``model`` — ``VadConfig`` and the presets, the network (LGT-Adapter, C- and
  A-branch), the losses, checkpoints;
* ``clip`` (the frozen open_clip towers and their weights) and ``video`` (decoding
  one frame per snippet; sample videos);
* ``io`` — where data lives: paths and URIs through pyarrow.fs, committed Parquet
  parts, feature sets, ground truth, provenance.  Never imports torch, Ray or MLflow;
* ``errors`` — input problems vs problems of the environment.

``testing`` holds the oracles the tests and benchmarks compare against (a per-sample
and an official-code re-implementation, synthetic feature sets); no production module
imports it.

The names below are imported on first use, so ``import vadclip.io.storage`` loads
neither torch nor open_clip.
"""
from __future__ import annotations

import importlib

from vadclip._version import __version__

_EXPORTS = {
    "ClipSpec": "vadclip.clip.spec", "VadConfig": "vadclip.model.config", "LabelError": "vadclip.model.config",
    "tiny_config": "vadclip.model.config", "VadCLIP": "vadclip.model.network", "VadOutput": "vadclip.model.network",
    "build_model": "vadclip.model.network", "score_video": "vadclip.model.network",
    "evaluate": "vadclip.metrics.evaluate",
    # the jobs, as the command line runs them
    "run_extract": "vadclip.jobs.extract", "ExtractOptions": "vadclip.jobs.extract",
    "run_train": "vadclip.jobs.train", "TrainOptions": "vadclip.jobs.train", "run_seeds": "vadclip.jobs.seeds",
    "run_calibrate": "vadclip.jobs.calibrate", "CalibrateOptions": "vadclip.jobs.calibrate",
    "run_score": "vadclip.jobs.score", "ScoreOptions": "vadclip.jobs.score",
    "run_evaluate": "vadclip.jobs.evaluate",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vadclip' has no attribute {name!r}")
