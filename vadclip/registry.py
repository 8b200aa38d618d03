"""MLflow model packaging and registry: a pyfunc that scores a [T, D] feature array,
registration under a name, and an alias (``@champion``) moved only on improvement."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

try:
    import mlflow.pyfunc

    _Base = mlflow.pyfunc.PythonModel
except Exception:  # pragma: no cover - mlflow is a hard dependency
    _Base = object


class VadCLIPPyfunc(_Base):
    """pyfunc model: ``predict(features [T, D])`` → DataFrame with the per-snippet
    ``anomaly`` score (C-branch sigmoid) and one ``p_<class>`` column per class."""

    def load_context(self, context) -> None:
        from .checkpoint import load_checkpoint

        self.model = load_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params: Optional[Dict[str, Any]] = None):
        import pandas as pd

        from .model import score_video

        x = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.model.embed_dim:
            raise ValueError(f"expected features [T, {self.model.embed_dim}], got shape {x.shape}")
        anomaly, probs = score_video(self.model, x)
        df = pd.DataFrame({"anomaly": anomaly})
        for i, k in enumerate(self.model.cfg.class_keys):
            df[f"p_{k}"] = probs[:, i]
        return df


def export_inference_checkpoint(train_ckpt: str, out_path: str) -> str:
    """Training checkpoint → self-contained scoring checkpoint (frozen text features,
    no CLIP weights needed)."""
    from .checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(train_ckpt, with_clip=True)
    model.freeze_text()
    save_checkpoint(model, out_path)
    return out_path


def log_and_register(train_ckpt: str, run_id: str, tracking_uri: str, register_name: Optional[str],
                     alias: str, metric: str, value: Optional[float], log=print) -> Dict[str, Any]:
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    out: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        path = export_inference_checkpoint(train_ckpt, os.path.join(d, "vadclip_inference.pt"))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=VadCLIPPyfunc(),
                                           artifacts={"checkpoint": path},
                                           pip_requirements=["vadclip", "torch", "numpy", "pandas"])
            if value is not None and np.isfinite(value):
                mlflow.log_metric(f"best_{metric}", float(value))
    out["model_uri"] = info.model_uri
    if not register_name:
        return out
    client = MlflowClient(tracking_uri=tracking_uri)
    mv = mlflow.register_model(f"runs:/{run_id}/model", register_name)
    client.set_model_version_tag(register_name, mv.version, metric, str(value))
    out["registered_version"] = int(mv.version)
    current = None
    try:
        cur = client.get_model_version_by_alias(register_name, alias)
        current = float(cur.tags.get(metric, "nan"))
    except Exception:  # no champion yet
        cur = None
    better = cur is None or not np.isfinite(current) or (value is not None and value > current)
    if better:
        client.set_registered_model_alias(register_name, alias, mv.version)
        log(f"[registry] {register_name} v{mv.version} is the new @{alias} ({metric}={value})")
    else:
        log(f"[registry] {register_name} v{mv.version} registered; @{alias} stays v{cur.version} "
            f"({metric} {current} ≥ {value})")
    out["promoted"] = bool(better)
    out["alias"] = alias
    return out


def load_scoring_model(uri: str, tracking_uri: Optional[str] = None):
    """A VadCLIP model for scoring from ``models:/NAME@ALIAS`` (or any MLflow model URI)
    or a checkpoint file (a training checkpoint gets its text features frozen)."""
    from .checkpoint import CheckpointError, load_checkpoint

    if os.path.exists(uri):
        try:
            return load_checkpoint(uri, with_clip=False)
        except CheckpointError as e:
            if "no frozen text features" not in str(e):
                raise
        model = load_checkpoint(uri, with_clip=True)
        model.freeze_text()
        return model.eval()
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(uri).unwrap_python_model().model
