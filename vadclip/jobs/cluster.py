"""Ray start-up shared by the jobs.

With ``--address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets for the job's
driver) a job joins that cluster; ``--address auto`` joins a cluster started on this
machine with ``ray start``.  Otherwise it starts an embedded local Ray of its own,
whether or not some other Ray is running on the machine.

Object-storage settings (``AWS_ENDPOINT_URL``, regions, ``VADCLIP_SCRATCH``, …) in the
driver's environment go to the job's workers with it when the job joins a running
cluster from a shell — credentials only when asked (:func:`_forwarded_env`); under
``ray job submit`` the job's ``runtime_env`` rules; an embedded Ray's workers inherit
the driver's environment."""
from __future__ import annotations

import os
import sys
from typing import Optional


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None,
               no_progress_timeout_s: Optional[float] = None, progress_bars: Optional[bool] = None) -> None:
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address and address != "local":
            try:
                ray.init(address=address, log_to_driver=True, runtime_env=_forwarded_env())
            except ConnectionError as e:   # no cluster there, or one whose token this shell lacks
                from vadclip.errors import EnvironmentProblem

                raise EnvironmentProblem(f"cannot join the Ray cluster at {address} (is it up? a head started with "
                                         f"`ray start` also wants RAY_AUTH_MODE=token here): {e}") from e
        else:
            # with its dashboard where ray[default] is installed: Ray Train's controller asks the
            # state API (served by it) whether it is alive, every second, and warns each time it cannot
            dashboard = _dashboard_installed()
            port = _free_port() if dashboard else None
            # Ray's start-up lines (that it chose token authentication for this local instance, as
            # it should; the token written; the instance started) stay off the console unless
            # VADCLIP_VERBOSE=1: nothing in them is for the user to act on
            import logging

            quiet = os.environ.get("VADCLIP_VERBOSE") != "1"
            if quiet:
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_port=port,
                     logging_level=logging.WARNING if quiet else logging.INFO,
                     log_to_driver=True, runtime_env=_worker_env(port),
                     _system_config={"worker_maximum_startup_concurrency": startup_concurrency(num_cpus)})
    import ray.data

    ctx = ray.data.DataContext.get_current()
    timeout = no_progress_timeout_s if no_progress_timeout_s is not None else \
        os.environ.get("VADCLIP_DATA_NO_PROGRESS_TIMEOUT_S")
    if timeout:
        ctx.execution_no_progress_timeout_s = float(timeout)
    # a map task that raises (the environment's errors; input problems are caught as
    # error rows inside the stages) is retried twice before the job fails
    ctx.retried_map_errors = True
    ctx.max_map_retries = 2
    if progress_bars is None:
        # bars redraw in place on a terminal; into a log file or a job's log every redraw
        # becomes a line (hundreds of KB for the demo), so they are off there unless asked for
        env = os.environ.get("VADCLIP_PROGRESS_BARS")
        progress_bars = env != "0" if env is not None else sys.stderr.isatty()
    ctx.enable_progress_bars = progress_bars
    quiet_ray_data(progress_bars)


def startup_concurrency(num_cpus: Optional[int] = None) -> int:
    """How many worker processes an embedded Ray may start at once.  Ray's default is the
    core count, and its raylet warns (three lines per demo) once 4x that many have
    started; a pipeline here runs about 20 (encoders, writers, decode tasks, Train's
    controller, worker and dataset manager) whatever the cores, so on a 2-core machine
    that warning is about the shape of the job, not a fault.  At least 8: the warning
    then means 32 processes."""
    return max(8, int(num_cpus or 0), os.cpu_count() or 1)


def quiet_ray_data(progress_bars: bool = False) -> None:
    """In this process (the driver, a training worker): Ray Data's INFO lines (an execution
    plan, a start and an end per dataset) stay in its log file (``ray-data.log`` of the
    session's logs) and off the console unless ``VADCLIP_VERBOSE=1``; progress bars that
    are off by choice (vadclip prints its own progress lines) are not worth a warning."""
    import logging

    if not progress_bars:
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")
    if os.environ.get("VADCLIP_VERBOSE") == "1":
        return
    for h in logging.getLogger("ray.data").handlers:
        if type(h).__name__ != "SessionFileHandler":
            h.setLevel(max(h.level, logging.WARNING))
            # an operator's failure (its traceback) stays in ray-data.log: the job raises it and
            # vadclip says it in one line (exit 3 for the environment's, an error row for a video's)
            if not any(isinstance(f, _NoErrors) for f in h.filters):
                h.addFilter(_NoErrors())


class _NoErrors:
    def filter(self, record) -> bool:
        import logging

        return record.levelno < logging.ERROR


def _dashboard_installed() -> bool:
    try:
        import aiohttp  # noqa: F401  (ray[default])
        import ray.dashboard  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(dashboard_port: Optional[int]):
    """What the workers of an embedded Ray are told: where its state API is (Ray Train's
    placement-group cleaner otherwise looks for "the" local Ray and, where several run or
    a stale one is recorded, asks another), and whether the command is verbose."""
    env = {}
    if dashboard_port:
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    if os.environ.get("VADCLIP_VERBOSE"):
        env["VADCLIP_VERBOSE"] = os.environ["VADCLIP_VERBOSE"]
    else:
        # Ray Train's dataset manager sets a Ray Data option that Ray itself deprecated
        # (ExecutionOptions.exclude_resources, from ray/train/_internal/data_config.py): a
        # warning no user can act on, two lines in every training's log
        env["PYTHONWARNINGS"] = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), RAY_INTERNAL_WARNING)))
    return {"env_vars": env} if env else None


RAY_INTERNAL_WARNING = "ignore::DeprecationWarning:ray.data._internal.execution.interfaces.execution_options"


STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_", "VADCLIP_SCRATCH")
CREDENTIAL_WORDS = ("SECRET", "TOKEN", "KEY", "PASSWORD", "CREDENTIAL", "SAS", "CONNECTION_STRING")
FORWARD_CREDENTIALS = "VADCLIP_FORWARD_CREDENTIALS"


def is_credential(name: str) -> bool:
    """An environment variable that holds (or points to) a secret: keys, tokens,
    passwords, credential files."""
    return any(w in name.upper() for w in CREDENTIAL_WORDS)


def _forwarded_env():
    """What a job joining a running cluster from a shell hands its workers: the storage
    *settings* of the shell (endpoint, region, scratch) — never its credentials, which
    a runtime_env shows to anyone with the dashboard or the job API, and which expire
    (a session token) during a long job: on a cluster the workers use their node's own
    credential chain (instance profile, IRSA, workload identity).  With
    ``VADCLIP_FORWARD_CREDENTIALS=1`` the credentials go too (a cluster without a
    credential chain of its own; they are never printed)."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:   # a submitted job: its runtime_env rules
        return None
    secrets = os.environ.get(FORWARD_CREDENTIALS) == "1"
    env = {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES) and
           (secrets or not is_credential(k))}
    return {"env_vars": env} if env else None


def lost_with_a_node(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is Ray saying that work died with a worker
    process or node — what a re-run of the lost videos mends — rather than an error of
    the job's own."""
    from ray import exceptions as rx

    from vadclip.errors import environment_cause

    if environment_cause(exc) is not None:    # a worker named the environment's problem: no re-run mends it
        return False
    kinds = tuple(k for k in (getattr(rx, n, None) for n in (
        "RayActorError", "ActorUnavailableError", "ObjectLostError", "NodeDiedError", "WorkerCrashedError",
        "OwnerDiedError", "ObjectReconstructionFailedError", "LocalRayletDiedError", "ObjectFetchTimedOutError"))
        if isinstance(k, type))
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "actor_init_failed", False):
            return False      # its constructor raised: an error of the job's, not work lost with a node
        if isinstance(exc, kinds):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def launchable_gpus() -> Optional[float]:
    """The most GPUs the cluster's autoscaler can launch, from its node types (None:
    no autoscaler found, or its config names no GPU).  Where Ray keeps the node types
    in the GCS (``ray._private.state``, what Ray Data's own autoscaling reads; open-source
    Ray 2.60's monitors do not write it), from there; else from the config file the
    cluster's autoscaler reads: the ``--autoscaling-config`` of the monitor process of
    this cluster on this node (a ``ray job submit`` driver runs on the head, where the
    monitor of ``ray up`` and ``ray start --autoscaling-config`` runs), or
    ``~/ray_bootstrap_config.yaml`` (what ``ray up`` puts on the head).  KubeRay's
    autoscaler runs in a container of its own: there ``--device cuda`` declares GPUs."""
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - a private call: absent or changed in another Ray
        most = {}
    if most.get("GPU"):
        return float(most["GPU"])
    config = _autoscaling_config()
    return gpus_in_config(config) if config else None


def gpus_in_config(config: dict) -> Optional[float]:
    """The GPUs an autoscaling config's node types can bring: each type's ``GPU`` times
    its ``max_workers`` (the cluster's ``max_workers`` where a type says none)."""
    total = 0.0
    head = config.get("head_node_type")
    for name, t in (config.get("available_node_types") or {}).items():
        gpus = float(((t or {}).get("resources") or {}).get("GPU") or 0)
        count = 1 if name == head else int(t.get("max_workers", config.get("max_workers", 0)) or 0)
        total += gpus * count
    return total or None


def _autoscaling_config() -> Optional[dict]:
    import json

    import yaml

    paths = []
    mine = _gcs_address()
    for pid in (d for d in os.listdir("/proc") if d.isdigit()) if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("monitor.py") for a in argv):
            continue
        flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        if flags.get("autoscaling-config") and (mine is None or flags.get("gcs-address") == mine):
            paths.append(flags["autoscaling-config"])
    paths.append(os.path.expanduser("~/ray_bootstrap_config.yaml"))
    for path in paths:
        try:
            with open(path) as f:
                text = f.read()
            config = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(config, dict) and config.get("available_node_types"):
            return config
    return None


def _gcs_address() -> Optional[str]:
    try:
        import ray

        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - not connected: any monitor on this node
        return None


def use_gpus(device: str, log) -> bool:
    """Whether the encoders ask for GPUs, declared by the command (``--device``), not
    found on the nodes alive at start (at ``min_workers: 0`` there are none yet).
    ``cuda`` on a cluster that has none and can launch none is the environment's
    problem; ``auto`` there encodes on CPUs and says so once."""
    from vadclip.errors import EnvironmentProblem

    if device == "cpu":
        return False
    now, later = cluster_gpus(), launchable_gpus()
    if device == "cuda":
        if not now and not later:
            raise EnvironmentProblem("--device cuda: the cluster has no GPU and its autoscaler can launch none")
        return True
    if now or later:
        return True
    log("[extract] no GPU in the cluster and none its autoscaler can launch: the encoders run on CPUs")
    return False


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


class RayCarrier:
    """Hands a file's bytes to processes on other nodes through Ray's object store (the
    ``carrier`` of :class:`vadclip.clip.weights.Weights`)."""

    def __init__(self, ref, node: Optional[str]):
        self.ref, self.node = ref, node

    def here(self) -> bool:
        return self.node is None or self.node == _node_id()

    def fetch(self):
        import ray

        return ray.get(self.ref)


def share_weights(weights):
    """``weights`` (or None) with its file's bytes put in Ray's object store once per job."""
    if weights is None or weights.carrier is not None:
        return weights
    import dataclasses

    import numpy as np
    import ray

    ref = ray.put(np.memmap(weights.path, dtype=np.uint8, mode="r"))
    return dataclasses.replace(weights, carrier=RayCarrier(ref, _node_id()))


def _node_id() -> Optional[str]:
    """This process's Ray node (None outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None
