"""The cluster page's (docs/cluster.md) `ray start --head` + `ray job submit` block, run as written.

The only change to the block: the head is started with ``--block`` in the background
and stopped by signalling that process, where the README says ``ray stop`` — ``ray
stop`` ends every Ray process of the machine, the test session's own Ray included."""
import os
import re
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block() -> str:
    text = open(os.path.join(ROOT, "docs", "cluster.md")).read()
    m = re.search(r"<!-- cluster-local:begin -->\s*```bash\n(.*?)```\s*<!-- cluster-local:end -->", text, re.S)
    assert m, "docs/cluster.md has no cluster-local block"
    return m.group(1)


def dashboard_available() -> str:
    """'' when `ray start --head` can serve jobs here, else why not."""
    if shutil.which("ray") is None:
        return "the `ray` command is not on PATH"
    try:
        import aiohttp  # noqa: F401  (ray[default])
        import ray.dashboard  # noqa: F401
    except ImportError as e:
        return f"ray[default] is not installed ({e}); install vadclip[cluster]"
    return ""


def test_readme_block_names_the_steps_a_new_user_needs():
    block = readme_block()
    for needed in ('pip install -e ".[cluster]"', "ray start --head", "RAY_AUTH_MODE=token", "ray job submit",
                   "jobs/extract_features.py", "jobs/train.py", "jobs/score_archive.py", "--tracking-uri",
                   "ray stop"):
        assert needed in block, needed


@pytest.mark.slow
def test_readme_ray_job_submit_workflow_runs_as_written(tmp_path):
    why = dashboard_available()
    if why:
        pytest.skip(why)
    script = readme_block()
    script = script.replace("ray start --head\n", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 ray start --head --block "
                            "--disable-usage-stats & HEAD=$!\n"
                            "for i in $(seq 90); do RAY_AUTH_MODE=token ray job list --address "
                            "http://127.0.0.1:8265 >/dev/null 2>&1 && break; sleep 2; done\n", 1)
    script = script.replace("ray stop\n", "kill -TERM $HEAD; wait $HEAD || true\n")
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["WORK"] = str(work)
    # a head that outlives a failed run would block the next one: stop it on any exit
    full = ("set -euo pipefail\n"
            "trap 'if [ -n \"${HEAD:-}\" ]; then kill -TERM $HEAD 2>/dev/null || true; fi' EXIT\n" + script)
    had_mlruns = os.path.exists(os.path.join(ROOT, "mlruns"))
    r = subprocess.run(["bash", "-c", full], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert len(re.findall(r"Job '\S+' succeeded", out)) == 3, out[-6000:]
    feats = pq.read_table(str(work / "train_features" / "features"), columns=["video_id"]).num_rows
    assert feats == 12
    scores = pq.read_table(str(work / "scores" / "scores")).to_pylist()
    assert sorted(r["video_id"] for r in scores) == [f"s1_{i:03d}" for i in range(4)]
    assert all(r["label"] is None for r in scores)          # the archive was scored as unlabeled
    # one store, its artifacts beside it; nothing written into the checkout
    assert (work / "mlflow.db").exists() and list((work / "mlartifacts").rglob("MLmodel"))
    assert had_mlruns or not os.path.exists(os.path.join(ROOT, "mlruns"))
