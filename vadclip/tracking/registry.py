"""MLflow model packaging and registry: a pyfunc that scores a [T, D] feature array,
registration under a name, and an alias (``@champion``) moved only on improvement."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

import numpy as np

from vadclip._version import __version__
from vadclip.io import storage
from vadclip.errors import InputError, MissingInputError, one_line

try:
    import mlflow.pyfunc

    _Base = mlflow.pyfunc.PythonModel
except Exception:  # pragma: no cover - mlflow is a hard dependency
    _Base = object


# the input's type hint is np.ndarray (features [T, D]): MLflow infers no schema from it and
# validates by the signature logged with the model; without a hint it warns at class definition
class VadCLIPPyfunc(_Base):
    """pyfunc model: ``predict(features [T, D])`` → DataFrame with the per-snippet
    ``anomaly`` score (C-branch sigmoid) and one ``p_<class>`` column per class."""

    def load_context(self, context) -> None:
        from vadclip.model.checkpoint import load_checkpoint

        self.model = load_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: np.ndarray, params: Optional[Dict[str, Any]] = None):
        import pandas as pd

        from vadclip.model.network import score_video

        x = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.model.embed_dim:
            raise ValueError(f"expected features [T, {self.model.embed_dim}], got shape {x.shape}")
        anomaly, probs = score_video(self.model, x)
        df = pd.DataFrame({"anomaly": anomaly})
        for i, k in enumerate(self.model.cfg.class_keys):
            df[f"p_{k}"] = probs[:, i]
        return df


# models from code: loading the MLflow model runs this file, never unpickles a class
MODEL_CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfunc.py")


def _signature(model) -> Dict[str, Any]:
    """Signature and input example of the pyfunc: features [T, D] float32 in; a frame
    of ``anomaly`` and one ``p_<class>`` column per class out (from ``model``'s output)."""
    import pandas as pd
    from mlflow.models import infer_signature

    from vadclip.model.network import score_video

    example = np.random.default_rng(0).normal(size=(8, model.embed_dim)).astype(np.float32)
    anomaly, probs = score_video(model, example)
    out = pd.DataFrame({"anomaly": anomaly, **{f"p_{k}": probs[:, i] for i, k in enumerate(model.cfg.class_keys)}})
    return {"signature": infer_signature(example, out), "input_example": example}


LOGGED_MODEL_TAG = "vadclip.logged_model"     # on a run: the pyfunc logged from it, and from which best epoch


def _version_of_run(client, name: str, run_id: str, best_epoch) -> Optional[Any]:
    """A version of ``name`` already registered from this run and this best epoch (a
    finished training run again) — registering it twice would only duplicate it."""
    for mv in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if mv.tags.get("vadclip_best_epoch") == str(best_epoch):
            return mv
    return None


def log_and_register(train_ckpt: Optional[str], run_id: str, tracking_uri: str, register_name: Optional[str],
                     alias: str, metric: str, value: Optional[float], best_epoch: Optional[int] = None,
                     log=None, model=None) -> Dict[str, Any]:
    """Log the model of ``train_ckpt`` (or an already loaded scoring ``model``) to the
    MLflow run as a pyfunc, register it as ``register_name`` and move ``alias`` to it
    when its ``metric`` beats the alias's (with ``value`` None: unless the alias's version
    has a number for ``metric``).  A run that already holds its model for this best
    epoch (a finished training run again) is not given a second copy."""
    log = log or logging.getLogger("vadclip").info
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    out: Dict[str, Any] = {}
    if register_name:
        try:
            prior = _version_of_run(client, register_name, run_id, best_epoch)
        except MlflowException:
            prior = None
        if prior is not None:
            log(f"[registry] {register_name} v{prior.version} already holds this run's best model; "
                "not registered again")
            cur = _alias_version(client, register_name, alias)
            return {"model_uri": prior.source, "registered_version": int(prior.version), "alias": alias,
                    "promoted": cur is not None and cur.version == prior.version, "already_registered": True}
    logged = client.get_run(run_id).data.tags.get(LOGGED_MODEL_TAG)
    if logged and json.loads(logged).get("best_epoch") == best_epoch:
        uri = json.loads(logged)["uri"]
        if not register_name:
            return {"model_uri": uri}
        from vadclip.model.checkpoint import load_model_file

        return _register(client, uri, register_name, alias, metric, value, best_epoch,
                         model if model is not None else load_model_file(train_ckpt), log)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vadclip_inference.pt")
        from vadclip.model.checkpoint import load_model_file, save_checkpoint

        if model is None:   # a training checkpoint → a scoring model (frozen text features)
            model = load_model_file(train_ckpt)
        save_checkpoint(model, path)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=MODEL_CODE, artifacts={"checkpoint": path},
                                           pip_requirements=[f"vadclip=={__version__}", "torch", "numpy", "pandas"],
                                           **_signature(model))
            if value is not None and np.isfinite(value):
                mlflow.log_metric(f"best_{metric}", float(value))
            mlflow.set_tag(LOGGED_MODEL_TAG, json.dumps({"uri": info.model_uri, "best_epoch": best_epoch}))
    out["model_uri"] = info.model_uri
    if not register_name:
        return out
    return _register(client, info.model_uri, register_name, alias, metric, value, best_epoch, model, log)


def _new_version(client, model_uri: str, name: str):
    """A new version of the registered model ``name`` (created if need be) from the logged
    model ``model_uri`` (``models:/<model_id>``), through the client: what
    ``mlflow.register_model`` does, less the two lines it prints to stderr each time
    (the ``[registry]`` line says it)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    ref = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
    model_id = ref if ref and "/" not in ref and "@" not in ref else None
    run_id = client.get_logged_model(model_id).source_run_id if model_id else None
    return client.create_model_version(name, source=model_uri, run_id=run_id, model_id=model_id)


def _register(client, model_uri: str, register_name: str, alias: str, metric: str, value: Optional[float],
              best_epoch, model, log) -> Dict[str, Any]:
    """Register a logged model, tag the version and move the alias when it is better."""
    out: Dict[str, Any] = {"model_uri": model_uri}
    mv = _new_version(client, model_uri, register_name)
    client.set_model_version_tag(register_name, mv.version, metric, str(value))
    client.set_model_version_tag(register_name, mv.version, "vadclip_best_epoch", str(best_epoch))
    if model.cfg.feature_provenance:   # what it was trained on: scoring refuses features that do not fit
        client.set_model_version_tag(register_name, mv.version, "vadclip_feature_provenance",
                                     json.dumps(model.cfg.feature_provenance, sort_keys=True))
    out["registered_version"] = int(mv.version)
    cur = _alias_version(client, register_name, alias)
    current = _tag_value(cur, metric)
    # a version ranked by training loss (trained without --eval) never takes the alias from
    # one ranked otherwise; versions without the metric at all (a registered file) give way
    by_loss_only = metric == "neg_train_loss" and cur is not None and not np.isfinite(current)
    better = cur is None or (not np.isfinite(current) and not by_loss_only) or \
        (value is not None and np.isfinite(current) and value > current)
    if better:
        client.set_registered_model_alias(register_name, alias, mv.version)
        log(f"[registry] {register_name} v{mv.version} is the new @{alias} ({metric}={value})")
    else:
        log(f"[registry] {register_name} v{mv.version} registered; @{alias} stays v{cur.version} "
            f"({metric} {current} ≥ {value})")
    out["promoted"] = bool(better)
    out["alias"] = alias
    return out


def _tag_value(version, metric: str) -> float:
    """The metric a version was registered with (NaN when absent or not a number)."""
    try:
        return float(version.tags.get(metric, "nan")) if version is not None else float("nan")
    except ValueError:
        return float("nan")


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias yet
        return None


def register_model_file(path: str, name: str, alias: str = "champion",
                        tracking_uri: Optional[str] = None, experiment: str = "vadclip-official",
                        log=None) -> Dict[str, Any]:
    """Register any model file — an official VadCLIP ``.pth`` included — in the MLflow
    registry, so that it scores as ``models:/NAME@ALIAS``."""
    log = log or logging.getLogger("vadclip").info
    import mlflow

    from vadclip.model.checkpoint import load_model_file
    from vadclip.tracking.runs import use_experiment

    path = storage.absolute(path)
    if not storage.isfile(path):
        raise MissingInputError(f"model file not found: {path}")
    model = load_model_file(path)
    use_experiment(experiment, tracking_uri)
    with mlflow.start_run(run_name=f"register-{storage.basename(path)}") as run:
        mlflow.log_params({"source_file": path, "preset": model.cfg.preset,
                           "padding": model.cfg.padding})
    # no metric value: log_and_register moves the alias to the new version unconditionally
    out = log_and_register(None, run.info.run_id, mlflow.get_tracking_uri(), name, alias,
                           "registered", None, model=model, log=log)
    return dict(out, name=name, preset=model.cfg.preset, padding=model.cfg.padding)


MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def load_scoring_model(uri: str, tracking_uri: Optional[str] = None):
    """A VadCLIP model for scoring from ``models:/NAME@ALIAS`` (``runs:/…``, any MLflow
    model URI) or a checkpoint file of any kind (see :func:`checkpoint.load_model_file`).
    A URI or file that does not resolve raises an :class:`InputError` naming it."""
    from vadclip.model.checkpoint import load_model_file

    if not uri.startswith(MLFLOW_SCHEMES):
        uri = storage.absolute(uri)
        if not storage.isfile(uri):
            raise MissingInputError(f"model file not found: {uri} (a model is a checkpoint file or an MLflow "
                                    "model URI such as models:/NAME@champion)")
        return load_model_file(uri)
    from mlflow.exceptions import MlflowException

    from vadclip.tracking.runs import use_store

    store = use_store(tracking_uri)
    try:
        return load_model_file(model_checkpoint(uri))
    except MlflowException as e:
        raise InputError(f"model {uri}: {one_line(e, 300)} (MLflow store {store})") from None


def model_checkpoint(uri: str) -> bytes:
    """The checkpoint a logged vadclip model carries, as bytes, read from the model's
    ``MLmodel`` file and its artifact: nothing stored in the registry is executed (the
    stored ``pyfunc.py`` is not imported; :func:`vadclip.model.checkpoint.load_model_file`
    reads the weights with ``torch.load(weights_only=True)`` into the installed vadclip's code)."""
    import tempfile

    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="vadclip-model-") as d:
        meta = mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/MLmodel", dst_path=d)
        with open(meta) as fh:
            flavour = (yaml.safe_load(fh) or {}).get("flavors", {}).get("python_function", {})
        rel = ((flavour.get("artifacts") or {}).get("checkpoint") or {}).get("path")
        if not rel:
            raise InputError(f"model {uri}: not a vadclip model (its MLmodel names no checkpoint artifact)")
        path = mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/{rel}", dst_path=d)
        with open(path, "rb") as fh:
            return fh.read()


def pin_version(model_uri: str, tracking_uri: Optional[str]) -> str:
    """``models:/NAME@ALIAS`` as the version the alias points to now (``models:/NAME/V``),
    resolved once at the start of a job so that a promotion during the job never mixes two
    versions; any other URI or a file as it is."""
    ident = model_identity(model_uri, tracking_uri)
    if ident.get("model_alias") and ident.get("model_version"):
        return f"models:/{ident['model_name']}/{ident['model_version']}"
    return model_uri


def model_identity(model_uri: str, tracking_uri: Optional[str]) -> Dict[str, Any]:
    """Registered name, version and alias of ``models:/NAME@ALIAS`` or ``models:/NAME/V``."""
    if not model_uri.startswith("models:/"):
        return {}
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = model_uri[len("models:/"):]
    name, alias, version = ref, None, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, version = ref.split("/", 1)
    try:
        if alias:
            version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version
    except MlflowException:
        pass
    return {"model_name": name, "model_version": version, "model_alias": alias}


# ------------------------------------------------------------------ operating points
OPERATING_POINT_TAG = "vadclip_operating_point"
OPERATING_POINT_RUN_TAG = "vadclip_operating_point_run"


def registered_version(model_uri: str, tracking_uri: Optional[str]):
    """(name, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/V``; None for any other
    model (a file, ``runs:/…``).  An alias or version that does not exist is an
    :class:`InputError` naming it."""
    if not model_uri.startswith("models:/"):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from vadclip.tracking.runs import use_store

    ref = model_uri[len("models:/"):]
    client = MlflowClient(tracking_uri=use_store(tracking_uri))
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        if "/" in ref:
            name, version = ref.split("/", 1)
            if version.isdigit():
                return name, str(client.get_model_version(name, version).version)
    except MlflowException as e:
        raise InputError(f"model {model_uri}: {one_line(e, 300)}") from None
    return None    # models:/NAME/latest and the like: no fixed version to hold a tag


def operating_point_of(model_uri: str, tracking_uri: Optional[str]) -> Optional[str]:
    """The operating point (JSON) stored on the registered model version ``model_uri``
    names, or None (not a registered version, or none calibrated)."""
    nv = registered_version(model_uri, tracking_uri)
    if nv is None:
        return None
    from mlflow.tracking import MlflowClient

    from vadclip.tracking.runs import use_store

    mv = MlflowClient(tracking_uri=use_store(tracking_uri)).get_model_version(*nv)
    return mv.tags.get(OPERATING_POINT_TAG)


def store_operating_point(model_uri: str, tracking_uri: Optional[str], op_json: str,
                          run_id: Optional[str] = None) -> Optional[str]:
    """Store an operating point (JSON) on the registered model version of ``model_uri``
    as a model version tag (and the calibration run's id beside it); returns
    ``models:/NAME/V``, or None when ``model_uri`` names no registered version."""
    nv = registered_version(model_uri, tracking_uri)
    if nv is None:
        return None
    from mlflow.tracking import MlflowClient

    from vadclip.tracking.runs import use_store

    client = MlflowClient(tracking_uri=use_store(tracking_uri))
    client.set_model_version_tag(nv[0], nv[1], OPERATING_POINT_TAG, op_json)
    if run_id:
        client.set_model_version_tag(nv[0], nv[1], OPERATING_POINT_RUN_TAG, run_id)
    return f"models:/{nv[0]}/{nv[1]}"
