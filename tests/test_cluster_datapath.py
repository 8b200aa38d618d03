"""On a local multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head without
CPUs, where the driver runs, and two worker nodes), the extraction job's encoders run on
worker nodes and writer actors on both worker nodes write every part: the driver only
plans and sums counts.  It runs in a subprocess so the cluster is its own."""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

SCRIPT = r"""
import json, sys
import ray
from ray.cluster_utils import Cluster
from vadclip.clip.spec import ClipSpec
from vadclip.jobs.cluster import ensure_ray
from vadclip.jobs.extract import ExtractOptions, run_extract

manifest, out = sys.argv[1], sys.argv[2]
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
workers = [c.add_node(num_cpus=3) for _ in range(2)]
c.wait_for_nodes()
ray.init(address=c.address, log_to_driver=False)
ensure_ray()
s = run_extract(manifest, out, ExtractOptions(clip=ClipSpec.tiny(), num_encoders=2, num_writers=2, precision="fp32",
                                              decoder="decord", batch_size=32), log=lambda *_: None)
print(json.dumps({"summary": s, "driver_node": ray.get_runtime_context().get_node_id(),
                  "workers": [w.node_id for w in workers]}))
ray.shutdown()
c.shutdown()
"""


def test_workers_on_several_nodes_write_what_the_driver_never_receives(sample_videos, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, VADCLIP_PROGRESS_BARS="0", VADCLIP_DATA_NO_PROGRESS_TIMEOUT_S="120")
    r = subprocess.run([sys.executable, "-c", SCRIPT, sample_videos["manifest"], str(out)], capture_output=True,
                       text=True, timeout=480, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    s, workers = res["summary"], set(res["workers"])
    assert res["driver_node"] not in workers
    # the encoders ran on worker nodes (Ray Data places the pool's actors), and the two
    # writers wrote from both worker nodes; the driver's node hosted neither
    assert s["encoder_nodes"] and set(s["encoder_nodes"]) <= workers
    assert set(s["writer_nodes"]) == workers
    # every good video one row, every bad one an error row, in parts the writers committed
    good = sorted(v["video_id"] for v in sample_videos["good"])
    assert s["videos_ok"] == len(good) and s["videos_failed"] == len(sample_videos["bad"])
    ids = pq.read_table(str(out / "features"), columns=["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == good
    parts = sorted(p for p in os.listdir(out / "features") if p.startswith("part-"))
    assert len(parts) == s["parts_written"] and {p.split("-w")[1][:3] for p in parts} <= {"000", "001"}
    from deltalake import DeltaTable

    assert sorted(os.path.basename(f) for f in DeltaTable(str(out / "features")).file_uris()) == parts
