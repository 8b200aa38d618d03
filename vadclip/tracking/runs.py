"""One MLflow store for every command.

The tracking URI is, in this order: the ``--tracking-uri`` option, the
``MLFLOW_TRACKING_URI`` environment variable, else a sqlite store at
``./runs/mlflow.db`` (made absolute from the current directory).  For a sqlite
(or file) store, experiments created here keep their artifacts beside the store
(``<store dir>/mlartifacts``), never in an ``./mlruns`` of whatever directory a
command happened to run in; a tracking server keeps its own artifact root.
``VADCLIP_ARTIFACT_ROOT`` (for example ``s3://bucket/mlartifacts``) puts the artifacts
of experiments created from then on there instead, whatever the store.
"""
from __future__ import annotations

import os
from typing import Optional

DEFAULT_STORE_DIR = "runs"


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{os.path.abspath(os.path.join(DEFAULT_STORE_DIR, 'mlflow.db'))}"


def _artifact_root(uri: str) -> Optional[str]:
    """``$VADCLIP_ARTIFACT_ROOT``, else beside a local store; None for a server (its own root)."""
    if os.environ.get("VADCLIP_ARTIFACT_ROOT"):
        return os.environ["VADCLIP_ARTIFACT_ROOT"].rstrip("/")
    if uri.startswith("sqlite:///"):
        base = os.path.dirname(uri[len("sqlite:///"):])
    elif uri.startswith("file://"):
        base = uri[len("file://"):]
    elif "://" not in uri:
        base = uri
    else:
        return None
    return "file://" + os.path.join(os.path.abspath(base), "mlartifacts")


def use_store(uri: Optional[str] = None) -> str:
    """Point MLflow at the resolved store (creating a sqlite store's folder); returns it."""
    import mlflow

    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]) or ".", exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def use_experiment(name: str, uri: Optional[str] = None) -> str:
    """Select (creating if needed) an experiment of the store; returns its id."""
    import mlflow

    uri = use_store(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        from mlflow.exceptions import MlflowException

        root = _artifact_root(uri)
        try:
            exp_id = mlflow.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
        except MlflowException:  # created meanwhile by another process
            exp_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_feature_set(path: str, name: str, context: str, meta=None) -> None:
    """Log a feature set as an ``mlflow.data`` input of the active run: its name, its
    source (path or URI), a digest and the row count, from the small ``video_id``,
    ``crop`` and ``label`` columns (``meta``: that table if already read)."""
    import mlflow

    from vadclip.io.parts import read_table

    if meta is None:
        meta = read_table(path, columns=["video_id", "crop", "label"], what=name)
    df = meta.to_pandas() if hasattr(meta, "to_pandas") else meta
    mlflow.log_input(mlflow.data.from_pandas(df, source=path, name=name), context=context)


def log_metrics(run_id: Optional[str], tracking_uri: Optional[str], metrics: dict, step: int) -> None:
    """Numbers of ``metrics`` (finite, not ``epoch``) to the run at ``step``; from any
    process (a training rank), without an active run."""
    if not run_id:
        return
    import math
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    ts = int(time.time() * 1000)
    MlflowClient(tracking_uri=tracking_uri).log_batch(
        run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and math.isfinite(v) and k != "epoch"])
