"""One MLflow store for every command.

The tracking URI is, in this order: the ``--tracking-uri`` option, the
``MLFLOW_TRACKING_URI`` environment variable, else a sqlite store at
``./runs/mlflow.db`` (made absolute from the current directory).  For a sqlite
(or file) store, experiments created here keep their artifacts beside the store
(``<store dir>/mlartifacts``), never in an ``./mlruns`` of whatever directory a
command happened to run in; a tracking server keeps its own artifact root.
``VADCLIP_ARTIFACT_ROOT`` (for example ``s3://bucket/mlartifacts``) puts the artifacts
of experiments created from then on there instead, whatever the store.

A tracking server's URI may carry ``user:password@``: MLflow is then given the URI
without them and the two in ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
of this process (MLflow's own way to carry them), because MLflow prints run URLs built
from the URI it is given.  Training ranks get them back through the training's
config (Ray's object store, never a log or the runtime_env).
"""
from __future__ import annotations

import os
import time
import urllib.parse
from typing import Optional

from vadclip.io.storage import redact, redact_all

DEFAULT_STORE_DIR = "runs"


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return _credentials_to_env(uri)
    return f"sqlite:///{os.path.abspath(os.path.join(DEFAULT_STORE_DIR, 'mlflow.db'))}"


def _credentials_to_env(uri: str) -> str:
    """An http(s) URI's ``user:password@`` moved into this process's MLflow variables;
    the URI without them.  Other URIs (a database's) keep theirs: their driver needs it."""
    p = urllib.parse.urlsplit(uri)
    if p.scheme not in ("http", "https") or "@" not in p.netloc:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(p.username or "")
    if p.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(p.password)
    return urllib.parse.urlunsplit(p._replace(netloc=p.netloc.rsplit("@", 1)[1]))


def with_credentials(uri: Optional[str]) -> Optional[str]:
    """``uri`` with this process's MLflow username and password put back, for a process
    that may not have them in its environment (a training rank on another node); to be
    handed over only through Ray's object store, never printed."""
    if not uri:
        return uri
    p = urllib.parse.urlsplit(uri)
    pwd = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if p.scheme not in ("http", "https") or "@" in p.netloc or pwd is None:
        return uri
    user = urllib.parse.quote(os.environ.get("MLFLOW_TRACKING_USERNAME", ""), safe="")
    return urllib.parse.urlunsplit(p._replace(netloc=f"{user}:{urllib.parse.quote(pwd, safe='')}@{p.netloc}"))


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
    # MLflow's S3 artifact client (boto3) gives up after 4 retries of a throttled upload by
    # default; an object store that answers SlowDown for a while is the store vadclip's own
    # requests retry 10 times (VADCLIP_STORAGE_RETRIES): the same for its artifacts, unless set
    os.environ.setdefault("AWS_RETRY_MODE", "standard")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", os.environ.get("VADCLIP_STORAGE_RETRIES", "10"))
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]) or ".", exist_ok=True)
    # MLflow's set_tracking_uri also writes MLFLOW_TRACKING_URI into this process's environment,
    # which the next call's resolve_tracking_uri would then take for the user's: a run given no
    # store after one given a store went to that store, not to the default.  The variable is put
    # back as it was (vadclip hands the store to its training ranks itself, never through it)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
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

    from vadclip.io.features import feature_meta

    if meta is None:
        meta = feature_meta(path, name).select(["video_id", "crop", "label"])
    import warnings

    df = meta.to_pandas() if hasattr(meta, "to_pandas") else meta
    # integer columns as doubles, as MLflow's schema inference asks (its hint otherwise)
    df = df.astype({c: "float64" for c in df.columns if str(df[c].dtype).startswith(("int", "uint"))})
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and then warns it is ambiguous
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(df, source=redact(path), name=name)
    for attempt in range(5):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except Exception as e:  # noqa: BLE001 - only the race below is retried
            # trainings of many seeds log the same feature set at once: the store's
            # get-or-create of the dataset row races (IntegrityError); the next try finds it
            if attempt == 4 or "IntegrityError" not in f"{e!r} {e}" and "UNIQUE constraint" not in str(e):
                raise
            time.sleep(0.2 * (attempt + 1))


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
    MlflowClient(tracking_uri=_credentials_to_env(tracking_uri) if tracking_uri else None).log_batch(
        run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and math.isfinite(v) and k != "epoch"])


# ------------------------------------------------------------------ training runs
class TrainingRun:
    """The MLflow run of one training (``--run-name`` under ``--storage``): found again
    when an interrupted training with the same name and storage runs again."""

    def __init__(self, experiment: str, tracking_uri: Optional[str], run_name: str, key: str,
                 parent_run_id: Optional[str] = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        use_experiment(experiment, tracking_uri)
        self.key = key
        self.tracking_uri = mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = mlflow.get_experiment_by_name(experiment)
        runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.vadclip_storage = '{key}'",
                                  output_format="list") if exp else []
        if runs:
            self.run_id = runs[0].info.run_id
        else:
            tags = {"vadclip_storage": key, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
            with mlflow.start_run(run_name=run_name, tags=tags) as r:
                self.run_id = r.info.run_id

    @staticmethod
    def _logged(v) -> str:
        import json

        return json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    def changed_params(self, params: dict) -> list:
        """``name a vs b`` for each of ``params`` this run logged with another value (MLflow
        keeps a run's parameters for good: a changed setting is another training)."""
        logged = self.client.get_run(self.run_id).data.params
        return [f"{k} {logged[k]} vs {self._logged(v)}" for k, v in sorted(params.items())
                if k in logged and logged[k] != self._logged(v)]

    def finished(self) -> bool:
        return self.client.get_run(self.run_id).info.status == "FINISHED"

    def log_start(self, params: dict, tags: dict, datasets) -> None:
        """Parameters (lists and dicts as JSON), tags, and the feature sets as dataset
        inputs: ``datasets`` = [(path, name, context, meta), ...]."""

        import mlflow

        changed = self.changed_params(params)
        if changed:
            from vadclip.errors import InputError

            raise InputError(f"training {self.key} was started with other settings ({'; '.join(changed[:4])}"
                             f"{'; …' if len(changed) > 4 else ''}: before vs now): give another --run-name to "
                             "train these settings, or remove its storage folder to start it over")
        with mlflow.start_run(run_id=self.run_id):
            mlflow.log_params({k: self._logged(v) for k, v in params.items()})
            for k, v in tags.items():
                if v:
                    mlflow.set_tag(k, v)
            for path, name, context, meta in datasets:
                log_feature_set(path, name, context, meta)

    def end(self, ok: bool) -> None:
        """FINISHED or FAILED (a failed training is never left FINISHED)."""
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


# ------------------------------------------------------------------- scoring runs
def log_scoring_run(experiment: str, tracking_uri: Optional[str], run_name: str, params: dict, tags: dict,
                    features: str, summary: dict, report, skip_metrics=()) -> None:
    """One MLflow run for a scoring job: parameters, tags, the archive as a dataset
    input, then ``report(local_dir, on_figure)`` (it writes the report into ``local_dir``,
    logs its timelines through ``on_figure(fig, name)`` and may add to ``summary``), then
    the summary's numbers as metrics (less ``skip_metrics``), the summary as a dict and
    the report as artifacts.  ``summary`` gains ``tracking_uri`` and ``mlflow_run_id``."""
    import math
    import tempfile

    import mlflow

    use_experiment(experiment, tracking_uri)
    summary["tracking_uri"] = redact(mlflow.get_tracking_uri())
    with mlflow.start_run(run_name=run_name) as run, \
            tempfile.TemporaryDirectory(prefix="vadclip-report-") as report_dir:
        summary["mlflow_run_id"] = run.info.run_id
        mlflow.log_params({k: redact(v) for k, v in params.items()})
        for k, v in tags.items():
            if v:
                mlflow.set_tag(k, redact(v))
        log_feature_set(features, "archive", "scoring")
        report(report_dir, lambda fig, name: mlflow.log_figure(fig, name))
        mlflow.log_metrics({k: float(v) for k, v in summary.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                            and k not in skip_metrics})
        mlflow.log_dict(redact_all(summary), "score_summary.json")
        mlflow.log_artifacts(report_dir, artifact_path="report")


# --------------------------------------------------------------- calibration runs
def log_calibration_run(experiment: str, tracking_uri: Optional[str], model_uri: str, features: str, op,
                        curve, figure=None) -> str:
    """One MLflow run for a calibration: the target and event rule as parameters, what
    the operating point gives on the validation footage as metrics, the operating point
    (``op``, an :class:`OperatingPoint`) and the scanned ``curve`` as JSON artifacts and
    ``figure`` (false alarms per hour against event recall) as an image.  Returns its id."""
    import math

    import mlflow

    use_experiment(experiment, tracking_uri)
    with mlflow.start_run(run_name="calibrate") as run:
        mlflow.log_params({"model_uri": model_uri, "features": features,
                           **{k: v for k, v in op.chosen_by.items() if v is not None},
                           **{f"rule_{k}": v for k, v in vars(op.rule).items() if k != "threshold"}})
        mlflow.set_tag("vadclip_calibrated_model", model_uri)
        log_feature_set(features, "validation", "calibration")
        mlflow.log_metrics({k: float(v) for k, v in op.on_validation.items()
                            if isinstance(v, (int, float)) and math.isfinite(v)})
        mlflow.log_dict(op.to_dict(), "operating_point.json")
        mlflow.log_dict({"curve": [{k: (v if math.isfinite(v) else None) for k, v in c.items()} for c in curve]},
                        "operating_curve.json")
        if figure is not None:
            mlflow.log_figure(figure, "operating_curve.png")
        return run.info.run_id


# ------------------------------------------------------------------ many seeds
def metric_histories(run_ids: dict, tracking_uri: Optional[str], metrics) -> dict:
    """{key: {metric: [(step, value), ...]}} of the runs ``run_ids`` = {key: run_id}."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    return {k: {m: sorted((h.step, h.value) for h in client.get_metric_history(rid, m)) for m in metrics}
            for k, rid in run_ids.items()}


def log_seed_summary(parent_run_id: str, tracking_uri: Optional[str], aggregate: dict, best_seed: int,
                     best_run_id: str, figure, per_seed: dict) -> None:
    """The parent run of a many-seed training: ``METRIC_mean/_std/_min/_max`` for every
    aggregated metric, the best seed (tags), the per-seed figures as a JSON artifact and
    the curves of every seed as an image."""
    import math
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    ts = int(time.time() * 1000)
    metrics = [Metric(f"{k}_{stat}", float(v[stat]), ts, 0) for k, v in aggregate.items()
               for stat in ("mean", "std", "min", "max")]
    for i in range(0, len(metrics), 500):
        client.log_batch(parent_run_id, metrics=metrics[i:i + 500])
    client.set_tag(parent_run_id, "vadclip.best_seed", str(best_seed))
    client.set_tag(parent_run_id, "vadclip.best_seed_run", best_run_id)
    clean = {str(s): {k: v for k, v in m.items() if isinstance(v, (int, float)) and math.isfinite(v)}
             for s, m in per_seed.items()}
    client.log_dict(parent_run_id, {"aggregate": aggregate, "per_seed": clean}, "seeds.json")
    if figure is not None:
        client.log_figure(parent_run_id, figure, "seed_curves.png")


def log_grid_summary(run_id: str, tracking_uri: Optional[str], metric: str, points, best_label: str) -> None:
    """The top run of a grid: per configuration ``LABEL.METRIC_mean``/``_std`` (the
    selection metric and every aggregated one), the best configuration as a tag and
    ``grid.json``."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    ts = int(time.time() * 1000)
    metrics = [Metric(f"{p['label']}.{k}_{stat}", float(v[stat]), ts, 0) for p in points
               for k, v in p["aggregate"].items() for stat in ("mean", "std")]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])
    client.set_tag(run_id, "vadclip.best_config", best_label)
    client.log_dict(run_id, {"metric": metric, "points": points, "best": best_label}, "grid.json")
