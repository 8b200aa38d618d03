"""Ray start-up shared by the jobs: connect to a cluster (``--address`` or
``RAY_ADDRESS``, as under ``ray job submit``) or start an embedded local Ray."""
from __future__ import annotations

import os
from typing import Optional


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None,
               no_progress_timeout_s: Optional[float] = None, progress_bars: Optional[bool] = None) -> None:
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    timeout = no_progress_timeout_s if no_progress_timeout_s is not None else \
        os.environ.get("VADCLIP_DATA_NO_PROGRESS_TIMEOUT_S")
    if timeout:
        ctx.execution_no_progress_timeout_s = float(timeout)
    if progress_bars is not None:
        ctx.enable_progress_bars = progress_bars
    elif os.environ.get("VADCLIP_PROGRESS_BARS", "1") == "0":
        ctx.enable_progress_bars = False


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
