"""An autoscaling cluster launches GPU nodes for the encoders (issue #33), on Ray's own
fake autoscaler: a head started with ``RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config=…`` (Ray's fake provider, autoscaler v2 as ``ray up`` starts it) that
offers no CPU, and two
worker node types at ``min_workers: 0`` — CPU nodes and nodes that declare one GPU.
At the start no worker node exists, so no GPU is in the cluster: ``vadclip extract
--device auto --address …`` must ask for GPUs because the autoscaler can launch them (it
reads the node types from the config file of this cluster's monitor; open-source Ray 2.60
keeps none in the GCS).

``ray.cluster_utils.AutoscalingCluster`` runs ``ray stop --force`` (which ends every
Ray on the machine) and needs the wheel's missing ``example.yaml``, so this test writes
the config itself, starts the head on ports and a temp dir of its own, and ends it by
its own processes (those whose command line names that temp dir).

A fake GPU node has no CUDA: the job's workers start with the tests' own set-up hook
(``tests/faultinject.py``, through the job config ``ray job submit`` would pass), which on
these nodes lets an encoder hold its GPU and encode on the CPU (vadclip itself fails a GPU
encoder without CUDA as the environment's problem,
``test_extract.py::test_an_encoder_holding_a_gpu_without_cuda_fails_as_the_environments_problem``)."""
import json
import os
import shutil
import signal
import random
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import faultinject

pytestmark = pytest.mark.slow


def _free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _worker_port_range(taken, width=200):
    """A range for Ray's worker ports that none of the head's other ports falls in: the others come
    from the kernel's ephemeral range, so the workers' range starts below it (and is free now)."""
    lo_eph = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo_eph = int(f.read().split()[0])
    except OSError:
        pass
    rng = random.Random()
    for _ in range(50):
        lo = rng.randrange(max(10000, lo_eph - 20000), lo_eph - width - 1)
        if any(lo <= p <= lo + width for p in taken):
            continue
        try:
            for port in range(lo, lo + width + 1, 10):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return lo
    raise RuntimeError("no free range of worker ports")


def _processes_naming(text):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(d))
        except OSError:
            pass
    return pids


def _end_processes(text):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_naming(text)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        t0 = time.time()
        while _processes_naming(text) and time.time() - t0 < 15:
            time.sleep(0.5)


@pytest.fixture
def fake_autoscaling_cluster():
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import FAKE_HEAD_NODE_ID

    ip = get_node_ip_address()
    ports = _free_ports(8)
    gcs, dash, client, mgr, obj, agent, metrics, rtenv = ports
    lo = _worker_port_range(ports)   # the head once failed: its agent's port lay in the workers' range
    temp = tempfile.mkdtemp(prefix="rfake", dir="/tmp")    # short: Ray's socket paths
    config = {
        "cluster_name": "vadclip-fake", "max_workers": 4, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        # Ray's fake provider by its module ("external"): as type fake_multinode the v2 monitor reads
        # defaults from fake_multi_node/example.yaml, which the wheel lacks
        "provider": {"type": "external", "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
                     "gcs_address": f"{ip}:{gcs}", "disable_node_updaters": True,
                     "disable_launch_config_check": True},   # its nodes are started by the provider itself
        "auth": {"ssh_user": "ray"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu.worker": {"resources": {"CPU": 2, "object_store_memory": 400 * 2**20}, "node_config": {}, "min_workers": 0, "max_workers": 2},
            "gpu.worker": {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 400 * 2**20}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    cfg = os.path.join(temp, "autoscaling.json")
    with open(cfg, "w") as f:
        json.dump(config, f)
    # a head from `ray start` takes token auth (its token in ~/.ray/auth_token): clients say so
    # autoscaler v2, as `ray up` starts it (RAY_UP_enable_autoscaler_v2 defaults to 1) and KubeRay's
    # `autoscalerOptions.version: v2`: it reports the node types to the GCS, where a job reads them
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "token",
           "RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
           "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
           "VADCLIP_PROGRESS_BARS": "0"}
    # the tests' worker set-up (tests/faultinject.py): a fake GPU node's encoder encodes on the CPU
    env = faultinject.job_env(env, **{faultinject.GPU_WITHOUT_CUDA: "1"})
    client_env = {k: v for k, v in env.items() if k not in ("RAY_CLOUD_INSTANCE_ID", "RAY_OVERRIDE_NODE_ID_FOR_TESTING")}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_bin, "start", "--head", f"--autoscaling-config={cfg}", "--num-cpus=0", "--num-gpus=0", f"--object-store-memory={400 * 2**20}",
           f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--node-manager-port={mgr}", f"--object-manager-port={obj}", f"--dashboard-agent-listen-port={agent}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rtenv}",
           f"--min-worker-port={lo}", f"--max-worker-port={lo + 200}", f"--temp-dir={temp}", "--disable-usage-stats"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        yield {"address": f"{ip}:{gcs}", "env": client_env, "temp": temp}
    finally:
        _end_processes(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_an_autoscaling_cluster_launches_gpu_nodes_and_the_encoders_hold_their_gpus(fake_autoscaling_cluster,
                                                                                    sample_videos, tmp_path):
    c = fake_autoscaling_cluster
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "vadclip.cli", "extract", sample_videos["manifest"], "--out", str(out),
                        "--tiny-clip", "--device", "auto", "--num-encoders", "1", "--address", c["address"]],
                       capture_output=True, text=True, env=c["env"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "none its autoscaler can launch" not in r.stderr       # it knew GPUs could come
    summary = json.loads(r.stdout)
    good = len(sample_videos["good"])
    assert summary["videos_ok"] == good and summary["videos_failed"] == len(sample_videos["bad"])
    assert summary["encoders_holding_gpus"] >= 1                   # each encoder held the GPU Ray gave it

    # what the cluster became (asked from a process of its own: this one's Ray has no token auth):
    # the autoscaler launched a GPU node, and the encoders ran on GPU nodes only
    q = subprocess.run([sys.executable, "-c", "import json, sys, ray; ray.init(address=sys.argv[1], "
                        "logging_level='ERROR', log_to_driver=False); print(json.dumps({n['NodeID']: n['Resources'] "
                        "for n in ray.nodes()}))", c["address"]], capture_output=True, text=True, env=c["env"],
                       timeout=120)
    assert q.returncode == 0, q.stderr[-2000:]
    nodes = {i: {"Resources": res} for i, res in json.loads(q.stdout.strip().splitlines()[-1]).items()}
    gpu_nodes = {i for i, n in nodes.items() if n["Resources"].get("GPU", 0) > 0}
    assert gpu_nodes, "no GPU node was launched"
    assert summary["encoder_nodes"] and set(summary["encoder_nodes"]) <= gpu_nodes
    head = [i for i, n in nodes.items() if n["Resources"].get("CPU", 0) == 0 and not n["Resources"].get("GPU")]
    assert head and not set(summary.get("writer_nodes", [])) & set(head)   # no writer on the head
