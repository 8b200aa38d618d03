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
import importlib.abc
import importlib.util
import sys

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


# modules of the flat layout before 0.2, still importable under their old names (a model
# registered before then runs ``from vadclip.registry import VadCLIPPyfunc`` when loaded)
_MOVED = {
    "vadclip.storage": "vadclip.io.storage", "vadclip.parts": "vadclip.io.parts",
    "vadclip.tables": "vadclip.io.tables", "vadclip.gt": "vadclip.io.gt",
    "vadclip.provenance": "vadclip.io.provenance", "vadclip.features": "vadclip.io.features",
    "vadclip.ids": "vadclip.io.ids", "vadclip.sample_videos": "vadclip.video.samples",
    "vadclip.clip_backbone": "vadclip.clip.backbone", "vadclip.weights": "vadclip.clip.weights",
    "vadclip.config": "vadclip.model.config", "vadclip.losses": "vadclip.model.losses",
    "vadclip.checkpoint": "vadclip.model.checkpoint", "vadclip.evaluation": "vadclip.metrics.evaluate",
    "vadclip.training": "vadclip.train.batches",
    "vadclip.registry": "vadclip.tracking.registry", "vadclip.mlflow_model": "vadclip.tracking.pyfunc",
    "vadclip.extract": "vadclip.jobs.extract", "vadclip.score": "vadclip.jobs.score",
    "vadclip.train_job": "vadclip.jobs.train", "vadclip.raysetup": "vadclip.jobs.cluster",
    "vadclip.demo": "vadclip.cli.demo",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in _MOVED else None

    def create_module(self, spec):
        module = importlib.import_module(_MOVED[spec.name])
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
