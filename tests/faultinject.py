"""Fault injection from the tests' side: a Ray ``worker_process_setup_hook`` that wraps
vadclip's own methods inside the job's worker processes. vadclip itself carries no hook
for it (issue #43): the tests' Ray starts every worker with :func:`install`
(``runtime_env={"worker_process_setup_hook": "faultinject.install"}``, with this folder
on the workers' ``PYTHONPATH``).

A fault is a file in the folder ``VADCLIP_TEST_FAULTS_DIR`` names (the tests' Ray sets
it when it starts; :func:`arm` writes one). Each fires once: the worker that meets it
renames the file to ``NAME.fired`` first (atomic, so exactly one process wins), and a
test asserts on that name that the fault really happened.

* ``encoder_exit-VIDEO_ID``: the encoder actor that meets the video dies (``os._exit``),
  as a process killed mid-batch does;
* ``exit_in_epoch-N``: training rank 0 dies half-way through epoch N, a few seconds into
  it (so that Train's controller holds the checkpoint of epoch N-1);
* ``raise_after_epoch-N``: a training rank raises once epoch N is reported.

On a node whose environment sets ``VADCLIP_TEST_GPU_WITHOUT_CUDA=1`` (the GPU nodes of
Ray's fake autoscaling cluster) an encoder holds its GPU and encodes on the CPU."""
from __future__ import annotations

import functools
import os
import time

ENV = "VADCLIP_TEST_FAULTS_DIR"
GPU_WITHOUT_CUDA = "VADCLIP_TEST_GPU_WITHOUT_CUDA"    # set on the nodes of Ray's fake autoscaling cluster
HOOK = "faultinject.install"


def arm(kind: str, value) -> str:
    """Ask for a fault (in the test, before the job): returns the path that exists once it fired."""
    path = os.path.join(os.environ[ENV], f"{kind}-{value}")
    open(path, "w").close()
    return path + ".fired"


def disarm() -> None:
    """Remove every fault file, fired or not (after a test)."""
    d = os.environ.get(ENV)
    for name in os.listdir(d) if d and os.path.isdir(d) else ():
        os.remove(os.path.join(d, name))


def _fires(kind: str, value) -> bool:
    d = os.environ.get(ENV)
    if not d:
        return False
    path = os.path.join(d, f"{kind}-{value}")
    try:
        os.rename(path, path + ".fired")
    except OSError:
        return False
    return True


def install() -> None:
    """Run by Ray at the start of every worker process of the tests' jobs."""
    if os.environ.get(GPU_WITHOUT_CUDA) == "1":
        _gpu_without_cuda()
    if os.environ.get(ENV):
        _wrap_encoder()
        _wrap_training()


def job_env(env: dict, **more) -> dict:
    """``env`` for a CLI process the tests start against a cluster of their own, its
    workers set up by :func:`install` as ``ray job submit --runtime-env-json`` would."""
    import json

    here = os.path.dirname(os.path.abspath(__file__))
    return {**env, **more, "PYTHONPATH": os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")])),
            "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"worker_process_setup_hook": HOOK}})}


def _gpu_without_cuda() -> None:
    """Ray's fake autoscaling cluster declares GPU nodes that have no CUDA: an encoder
    there holds the GPU Ray gave it and encodes on the CPU (vadclip itself fails a GPU
    encoder without CUDA as the environment's problem)."""
    import torch

    from vadclip.jobs.stages import EncodeStage

    setup = EncodeStage.setup
    if torch.cuda.is_available():
        return

    @functools.wraps(setup)
    def on_cpu(self):
        import ray

        share, self.share = self.share, 0.0
        try:
            setup(self)
        finally:
            self.share = share
        self.gpus_held = len(ray.get_gpu_ids()) if share else 0

    EncodeStage.setup = on_cpu


def _wrap_encoder() -> None:
    from vadclip.jobs.stages import EncodeStage

    call = EncodeStage.__call__

    @functools.wraps(call)
    def encode(self, batch):
        for vid in batch["video_id"]:
            if _fires("encoder_exit", vid):
                os._exit(1)
        return call(self, batch)

    EncodeStage.__call__ = encode


def _wrap_training() -> None:
    import vadclip.train.loop as loop
    from vadclip.jobs.train import _RayRank

    epoch_of = loop.EpochLoop.epoch
    step_of = loop.train_step
    report_of = _RayRank.report
    now = {}

    @functools.wraps(epoch_of)
    def epoch(self, shard, e, steps):
        now.update(epoch=e, rank=self.ranks.rank, step=0)
        return epoch_of(self, shard, e, steps)

    @functools.wraps(step_of)
    def step(*args, **kwargs):
        now["step"] = now.get("step", 0) + 1
        if now.get("rank") == 0 and now["step"] == 2 and _fires("exit_in_epoch", now["epoch"] + 1):
            time.sleep(5)
            os._exit(1)
        return step_of(*args, **kwargs)

    @functools.wraps(report_of)
    def report(self, metrics, e):
        report_of(self, metrics, e)
        if _fires("raise_after_epoch", e + 1):
            raise RuntimeError(f"injected failure after epoch {e + 1} (a test of crash recovery)")

    loop.EpochLoop.epoch, loop.train_step, _RayRank.report = epoch, step, report
