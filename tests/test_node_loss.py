"""A worker node lost mid-job (issue #33), on a local multi-node Ray cluster
(``ray.cluster_utils.Cluster``: a head without CPUs, where the driver runs, and two
worker nodes): once the job has committed its first part, one worker node is killed
ungracefully (``remove_node(allow_graceful=False)``, as a spot preemption) and a
replacement joins, as an autoscaler adds one.  Extraction and scoring from features
end as if nothing had happened: no exception, every good video exactly once, every bad
one an error row, no error row for the work lost with the node; and the immediate
re-run finds nothing left to do.  Each runs in a subprocess so the cluster is its own,
started and stopped by its own handle."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import glob, json, os, sys, threading, time
import ray
from ray.cluster_utils import Cluster
from vadclip.clip.spec import ClipSpec
from vadclip.jobs.cluster import ensure_ray
from vadclip.jobs.extract import ExtractOptions, run_extract
from vadclip.jobs.score import ScoreOptions, run_score

manifest, out, model, what = sys.argv[1:5]
# a dead node is noticed in about 5 s instead of Ray's default 15
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": {
    "health_check_period_ms": 1000, "health_check_failure_threshold": 5}})
workers = [c.add_node(num_cpus=4) for _ in range(2)]
c.wait_for_nodes()
ray.init(address=c.address, log_to_driver=False)
ensure_ray()
events = {}

def kill_at_first_commit(markers, running):
    t0 = time.time()
    while running.is_set() and time.time() - t0 < 300:
        commits = [f for f in glob.glob(os.path.join(markers, "*.json")) if '"add"' in open(f).read()]
        if commits:
            events["committed_before_kill"] = len(commits)
            c.remove_node(workers[0], allow_graceful=False)
            events["killed_at"] = time.time() - t0
            events["killed_while_running"] = running.is_set()
            events["replacement"] = c.add_node(num_cpus=4).node_id
            return
        time.sleep(0.05)

def run(job, markers):
    running = threading.Event(); running.set()
    t = threading.Thread(target=kill_at_first_commit, args=(markers, running)); t.start()
    t0 = time.time()
    try:
        s = job()
    finally:
        running.clear(); t.join()
    events["elapsed_s"] = time.time() - t0
    return s

log = lambda *a: print(*a, file=sys.stderr)
eo = ExtractOptions(clip=ClipSpec.tiny(), num_encoders=2, num_writers=2, precision="fp32", decoder="decord",
                    batch_size=16, rows_per_file=2, flush_seconds=1)
if what == "extract":
    s = run(lambda: run_extract(manifest, out, eo, log=log), os.path.join(out, "features", "_delta_log"))
    again = run_extract(manifest, out, eo, log=log)
elif what == "score-videos":     # one pipeline: decode, encode, and score where each video is assembled
    opts = ScoreOptions(rows_per_file=1, max_plots=0)
    s = run(lambda: run_score(model, out, videos=manifest, extract_opts=eo, opts=opts, log=log),
            os.path.join(out, "scores", "_delta_log"))
    again = run_score(model, out, videos=manifest, extract_opts=eo, opts=opts, log=log)
else:
    opts = ScoreOptions(rows_per_file=1, num_scorers=2, max_plots=0)
    s = run(lambda: run_score(model, out, features=manifest, opts=opts, log=log),
            os.path.join(out, "scores", "_delta_log"))
    again = run_score(model, out, features=manifest, opts=opts, log=log)
print(json.dumps({"summary": s, "again": again, "events": events, "victim": workers[0].node_id}, default=str))
ray.shutdown()
c.shutdown()
"""


def _run(*args, timeout=900):
    import tempfile

    # a tracking store of its own: the default, ./runs/mlflow.db in the checkout, keeps an experiment's
    # first artifact location, which a test run before this one may have put in a server now stopped
    store = tempfile.mkdtemp(prefix="vadclip-mlflow-")
    env = dict(os.environ, VADCLIP_PROGRESS_BARS="0", VADCLIP_DATA_NO_PROGRESS_TIMEOUT_S="240",
               MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db")
    r = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]), r.stderr


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from vadclip.video.samples import make_sample_set, write_manifest

    d = tmp_path_factory.mktemp("archive")
    good, _ = make_sample_set(str(d / "videos"), 12, 12, frames_range=(120, 260), seed=5)
    (d / "videos" / "broken.mp4").write_bytes(b"not a video")
    bad = [{"path": str(d / "videos" / "broken.mp4"), "label": "Normal", "video_id": "broken"},
           {"path": str(d / "videos" / "gone.mp4"), "label": "Normal", "video_id": "gone"}]
    write_manifest(good + bad, str(d / "manifest.csv"))
    return {"manifest": str(d / "manifest.csv"), "good": sorted(v["video_id"] for v in good),
            "bad": sorted(b["video_id"] for b in bad)}


def test_extraction_survives_a_worker_node_lost_mid_job(archive, tmp_path):
    from vadclip.io.parts import read_column

    out = tmp_path / "out"
    res, log = _run(archive["manifest"], out, "-", "extract")
    ev, s = res["events"], res["summary"]
    assert ev["killed_while_running"] and ev["committed_before_kill"] < len(archive["good"]) + 2
    assert sorted(read_column(str(out / "features"), "video_id")) == archive["good"]     # each once
    assert sorted(read_column(str(out / "errors"), "video_id")) == archive["bad"]        # no error for the node
    assert s["videos_ok"] + s["videos_failed"] == len(archive["good"]) + len(archive["bad"])
    assert res["again"]["videos_skipped"] == len(archive["good"]) + len(archive["bad"])
    assert res["again"]["videos_ok"] == 0 and res["again"]["videos_failed"] == 0
    print(f"node killed {ev['killed_at']:.1f}s into the job after {ev['committed_before_kill']} commits; "
          f"the job took {ev['elapsed_s']:.1f}s, {s['videos_redone']} videos redone in {s['rounds']} rounds")


def test_scoring_survives_a_worker_node_lost_mid_job(tmp_path):
    from vadclip import tiny_config
    from vadclip.io.features import write_feature_table
    from vadclip.io.parts import read_column
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.network import build_model
    from vadclip.testing.synthetic import make_feature_set

    cfg = tiny_config("custom", classes=["Normal", "Explosion", "Fighting"], visual_length=32, visual_layers=1)
    rows, _ = make_feature_set(cfg, 60, 60, 32, t_range=(40, 200), seed=3)
    feats = tmp_path / "features"
    for i, r in enumerate(rows):                    # a file per video: one block, one write task each
        write_feature_table([r], str(feats / f"{i:03d}.parquet"))
    save_checkpoint(build_model(cfg), str(tmp_path / "model.pt"))
    out = tmp_path / "scores"
    res, log = _run(feats, out, tmp_path / "model.pt", "score")
    ev, s = res["events"], res["summary"]
    assert ev["killed_while_running"] and ev["committed_before_kill"] < len(rows)
    ids = sorted(r["video_id"] for r in rows)
    assert sorted(read_column(str(out / "scores"), "video_id")) == ids
    assert read_column(str(out / "errors"), "video_id") == []
    assert s["videos_total_in_output"] == len(ids) and s["videos_failed_total"] == 0
    assert res["again"]["videos_scored"] == 0 and res["again"]["videos_skipped"] == len(ids)


def test_scoring_videos_survives_a_worker_node_lost_mid_job(archive, tmp_path):
    """``score --videos``: the writers extract and score each video where they assemble it;
    a worker node dies after the first scores are committed."""
    from vadclip import tiny_config
    from vadclip.io.parts import read_column
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.network import build_model

    cfg = tiny_config("custom", classes=["Normal", "Explosion", "Fighting", "RoadAccidents"], visual_length=32,
                      visual_layers=1)
    save_checkpoint(build_model(cfg), str(tmp_path / "model.pt"))
    out = tmp_path / "out"
    res, log = _run(archive["manifest"], out, tmp_path / "model.pt", "score-videos")
    ev, s = res["events"], res["summary"]
    assert ev["killed_while_running"] and ev["committed_before_kill"] < len(archive["good"])
    assert sorted(read_column(str(out / "features"), "video_id")) == archive["good"]    # each once
    assert sorted(read_column(str(out / "scores"), "video_id")) == archive["good"]
    assert sorted(read_column(str(out / "errors"), "video_id")) == archive["bad"]      # no error for the node
    assert s["videos_scored"] == len(archive["good"]) and s["videos_failed_total"] == len(archive["bad"])
    assert res["again"]["videos_scored"] == 0 and res["again"]["videos_skipped"] == len(archive["good"])
    print(f"node killed {ev['killed_at']:.1f}s into score --videos after {ev['committed_before_kill']} commits; "
          f"the job took {ev['elapsed_s']:.1f}s")


TRAIN_SCRIPT = r"""
import json, os, sys, threading, time
import ray
from ray.cluster_utils import Cluster
from vadclip import tiny_config
from vadclip.jobs.cluster import ensure_ray
from vadclip.jobs.train import run_train

train, storage, uri, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": {
    "health_check_period_ms": 1000, "health_check_failure_threshold": 5}})
workers = {n.node_id: n for n in (c.add_node(num_cpus=2) for _ in range(2))}
c.wait_for_nodes()
ray.init(address=c.address, log_to_driver=False)
ensure_ray()
events = {}

def kill_the_trainers_node(running):
    from ray.util.state import list_actors

    t0 = time.time()
    while running.is_set() and time.time() - t0 < 400:
        # a checkpoint counts once Train's controller has registered it (a directory on disk
        # may still be one the controller never took): its snapshot lists what it has
        try:
            with open(os.path.join(storage, "noded", "checkpoint_manager_snapshot.json")) as f:
                ckpts = json.load(f)["checkpoint_results"]
        except (OSError, ValueError, KeyError):
            ckpts = []
        if len(ckpts) >= 2:        # two epochs checkpointed: kill the node its rank runs on
            actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "TrainWorker" in a.class_name]
            on = [a.node_id for a in actors if a.node_id in workers]
            if not on:
                time.sleep(0.2); continue
            events["checkpoints_before_kill"] = len(ckpts)
            c.remove_node(workers[on[0]], allow_graceful=False)
            events["victim"], events["killed_at"] = on[0], time.time() - t0
            events["killed_while_running"] = running.is_set()
            events["replacement"] = c.add_node(num_cpus=2).node_id
            return
        time.sleep(0.1)

cfg = tiny_config("ucf", visual_length=64, lr=1e-3, batch_size=4, epochs=epochs, milestones=[100])
running = threading.Event(); running.set()
t = threading.Thread(target=kill_the_trainers_node, args=(running,)); t.start()
try:
    s = run_train(train, cfg, storage, run_name="noded", num_workers=1, cpus_per_worker=1, tracking_uri=uri,
                  max_failures=2, log=lambda *a: print(*a, file=sys.stderr))
finally:
    running.clear(); t.join()
print(json.dumps({"summary": s, "events": events}, default=str))
ray.shutdown()
c.shutdown()
"""


def test_training_survives_its_worker_node_lost_and_resumes_from_its_checkpoint(tmp_path):
    """The node running the training rank is killed after two epochs were checkpointed, and a
    replacement joins: Ray Train (FailureConfig max_failures=2) starts the worker group again
    on a live node, which resumes from the last checkpoint; the same run_train call returns
    a trained model, and the epochs before the kill are not trained twice."""
    import mlflow

    from vadclip import tiny_config
    from vadclip.io.features import write_feature_table
    from vadclip.testing.synthetic import make_feature_set

    epochs = 12
    cfg = tiny_config("ucf", visual_length=64, lr=1e-3, batch_size=4, epochs=epochs, milestones=[100])
    rows, _ = make_feature_set(cfg, 24, 24, 32, seed=1)
    write_feature_table(rows, str(tmp_path / "train.parquet"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = dict(os.environ, VADCLIP_PROGRESS_BARS="0", VADCLIP_DATA_NO_PROGRESS_TIMEOUT_S="240")
    r = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(tmp_path / "train.parquet"), str(tmp_path / "runs"),
                        uri, str(epochs)], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    ev, s = res["events"], res["summary"]
    assert ev.get("killed_while_running"), ev                       # the node died mid-training
    assert os.path.exists(s["best_checkpoint"])
    steps = [m.step for m in mlflow.tracking.MlflowClient(uri).get_metric_history(s["mlflow_run_id"], "loss")]
    assert set(steps) == set(range(1, epochs + 1))                  # every epoch trained, in the same call
    k = ev["checkpoints_before_kill"]
    # resumed, not restarted: the checkpointed epochs but the last ran once (the one in
    # flight at the kill may be logged again)
    assert all(steps.count(e) == 1 for e in range(1, k)), sorted(steps)
    assert len(steps) <= epochs + 2, sorted(steps)
    print(f"training node killed {ev['killed_at']:.1f}s in, after {k} checkpoints; epochs logged {sorted(steps)}")
