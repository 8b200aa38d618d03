"""Archives in object storage (issue #12), against a real S3-API server process
(moto's standalone server on 127.0.0.1) and a two-node Ray cluster whose head
offers no CPU, so every decode task runs on the other node and nothing can lean
on the driver's disk or working directory:

* videos, the manifest, features, errors, training storage, the best checkpoint,
  the MLflow artifacts, scores, plots and summaries all live under ``s3://``;
* an extraction whose driver is SIGKILLed resumes on S3 with no duplicate and no
  lost row, and a half-written part left in the bucket is never counted;
* a missing key, a zero-byte object and a corrupt object each become an error row.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from s3server import s3_server
from vadclip.io import storage
from vadclip import tiny_config
from vadclip.model.config import ClipSpec
from vadclip.jobs.extract import ExtractOptions, errors_dir, feature_dir, run_extract
from vadclip.io.parts import part_files, read_column

pytestmark = pytest.mark.slow
BUCKET = "vad"
CLASSES = ["Normal", "Explosion", "Fighting", "RoadAccidents"]


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as client:
        yield client


@pytest.fixture(scope="module")
def two_nodes(s3, tmp_path_factory):
    """Head with no CPU + one 4-CPU worker node; the session's local Ray comes back after."""
    import ray
    from ray.cluster_utils import Cluster

    had_local = ray.is_initialized()
    ray.shutdown()
    scratch = tmp_path_factory.mktemp("scratch")
    os.environ["VADCLIP_SCRATCH"] = str(scratch)      # the worker node's scratch (inherited)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=4)
    cluster.wait_for_nodes()
    from vadclip.jobs.cluster import ensure_ray

    ensure_ray(cluster.address)
    yield {"address": cluster.address, "scratch": scratch}
    ray.shutdown()
    cluster.shutdown()
    os.environ.pop("VADCLIP_SCRATCH", None)
    if had_local:
        from conftest import init_local_ray

        init_local_ray()


def _keys(client, prefix):
    out = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


def _rows_committed(client, log_prefix):
    """A commit of the Delta log under ``log_prefix`` adds a part (the lease's commit and a
    schema change add none)."""
    return any(b'"add"' in client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
               for k in _keys(client, log_prefix) if k.endswith(".json"))


@pytest.fixture(scope="module")
def s3_extracted(s3, two_nodes, sample_videos):
    """Upload the sample videos (good ones, a truncated, a corrupt and a zero-byte
    object; one manifest entry has no object), then extract them to S3: a first run
    killed with SIGKILL once it has committed a part, a half-written part dropped
    into the bucket as a crash would leave it, and the same command run again."""
    rows = []
    for v in sample_videos["good"] + sample_videos["bad"]:
        key = f"archive/videos/{os.path.basename(v['path'])}"
        if os.path.exists(v["path"]):
            s3.upload_file(v["path"], BUCKET, key)
        rows.append(f"videos/{os.path.basename(v['path'])},{v['label']},{v['video_id']}")
    s3.put_object(Bucket=BUCKET, Key="archive/manifest.csv",
                  Body=("path,label,video_id\n" + "\n".join(rows) + "\n").encode())
    manifest, out = f"s3://{BUCKET}/archive/manifest.csv", f"s3://{BUCKET}/extract"
    cmd = [sys.executable, "-m", "vadclip.cli", "extract", manifest, "--out", out, "--tiny-clip",
           "--flush-seconds", "0", "--rows-per-file", "1", "--batch-size", "8", "--address", two_nodes["address"]]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                         env={**os.environ, "VADCLIP_PROGRESS_BARS": "0"})
    t0, killed = time.time(), False
    while time.time() - t0 < 300 and p.poll() is None:
        if _rows_committed(s3, "extract/features/_delta_log/"):     # a commit of the log that adds a part
            os.killpg(p.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.1)
    _, err = p.communicate()
    assert killed, f"the first run finished or never committed a part: {err.decode()[-2000:]}"
    first = read_column(feature_dir(out), "video_id")
    # what a crash in the middle of an upload would leave: a part without its marker
    half = "extract/features/part-19990101000000-dead00-00000.parquet"
    s3.put_object(Bucket=BUCKET, Key=half, Body=b"PAR1 half-written")
    opts = ExtractOptions(clip=ClipSpec.tiny(), batch_size=8,
                          rows_per_file=4)
    summary = run_extract(manifest, out, opts, address=two_nodes["address"], log=lambda *_: None)
    return {"out": out, "first": first, "summary": summary, "half": half}


def test_extraction_on_s3_resumes_after_a_killed_driver(s3, two_nodes, s3_extracted, sample_videos):
    out = s3_extracted["out"]
    good = sorted(v["video_id"] for v in sample_videos["good"])
    assert 0 < len(s3_extracted["first"]) < len(good)            # really interrupted mid-job
    ids = read_column(feature_dir(out), "video_id")
    assert sorted(ids) == good                                     # none lost, none twice
    assert s3_extracted["summary"]["videos_skipped"] >= len(s3_extracted["first"])
    assert s3_extracted["half"] not in _keys(s3, "extract/features/")  # the half part was never counted
    errors = dict(zip(read_column(errors_dir(out), "video_id"), read_column(errors_dir(out), "error")))
    assert sorted(errors) == sorted(b["video_id"] for b in sample_videos["bad"])
    assert "missing.mp4: file not found" in errors["missing"]
    assert "empty.mp4: empty file (0 bytes)" in errors["empty"]
    assert "corrupt.mp4: not a readable video" in errors["corrupt"]
    assert all(e.startswith(f"s3://{BUCKET}/archive/videos/") for e in errors.values())
    summary = json.loads(storage.read_text(f"{out}/summary.json"))
    assert summary["videos_total"] == len(good) + len(errors)
    # every scratch copy on the worker node was removed, failures included
    assert not [f for f in os.listdir(two_nodes["scratch"]) if f.startswith("vadclip-")]


def test_train_and_score_with_s3_for_every_input_and_output(s3, two_nodes, s3_extracted, sample_videos,
                                                             tmp_path, monkeypatch):
    from vadclip.io.gt import write_gt
    from vadclip.jobs.score import ScoreOptions, run_score
    from vadclip.jobs.train import run_train

    monkeypatch.chdir(tmp_path)                                    # nothing may lean on the working directory
    monkeypatch.setenv("VADCLIP_ARTIFACT_ROOT", f"s3://{BUCKET}/mlartifacts")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    gt = f"s3://{BUCKET}/archive/gt.parquet"
    write_gt(sample_videos["gt"], gt)
    feats = feature_dir(s3_extracted["out"])
    cfg = tiny_config("custom", classes=CLASSES, visual_length=32, batch_size=2, epochs=2, lr=1e-3)
    tr = run_train(feats, cfg, f"s3://{BUCKET}/train", run_name="s3run", eval_path=feats, gt_path=gt,
                   num_workers=1, cpus_per_worker=0.5, tracking_uri=tracking, experiment="s3-exp",
                   register_name="vad-s3", address=two_nodes["address"], log=lambda *_: None)
    assert tr["best_checkpoint"] == f"s3://{BUCKET}/train/s3run/best/vadclip.pt"
    assert storage.isfile(tr["best_checkpoint"])
    assert [k for k in _keys(s3, "train/s3run/") if "/best/" not in k]   # Ray Train's own run state on S3
    assert _keys(s3, "mlartifacts/")                               # the MLflow model went to the S3 artifact root
    sc = run_score("models:/vad-s3@champion", f"s3://{BUCKET}/scores", features=feats, gt_path=gt,
                   opts=ScoreOptions(max_plots=2), tracking_uri=tracking, address=two_nodes["address"],
                   log=lambda *_: None)
    good = sorted(v["video_id"] for v in sample_videos["good"])
    assert sorted(read_column(f"s3://{BUCKET}/scores/scores", "video_id")) == good
    assert sc["videos_scored"] == len(good) and "auc" in sc
    # the registered version knows what it was trained on, and the features it scored fit it
    from mlflow.tracking import MlflowClient

    mv = MlflowClient(tracking).get_model_version("vad-s3", str(tr["registered_version"]))
    prov = json.loads(mv.tags["vadclip_feature_provenance"])
    assert prov["clip_model"] == "vadclip-tiny" and prov["snippet_len"] == 16 and prov["source"] == "vadclip extract"
    assert sc["feature_mismatch"] is None
    report = _keys(s3, "scores/report/")                         # the review report, in the bucket too
    assert "scores/report/index.html" in report and len([k for k in report if k.endswith("_timeline.png")]) == 2
    assert sc["report"] == f"s3://{BUCKET}/scores/report/index.html"
    summary = json.loads(storage.read_text(f"s3://{BUCKET}/scores/score_summary.json"))
    assert summary["videos_total_in_output"] == len(good)
    # each committed part reads back whole through plain pyarrow as well
    parts = part_files(f"s3://{BUCKET}/scores/scores")
    assert sum(pq.read_table(io.BytesIO(storage.read_bytes(f))).num_rows for f in parts) == len(good)
    assert not os.path.exists(tmp_path / "scores") and not os.path.exists(tmp_path / "mlruns")


def test_clip_weights_in_a_bucket_reach_the_actors_through_ray(s3, two_nodes, sample_videos, tmp_path):
    """Weights given as an s3:// URI are read once, by the driver; the encoder actors on
    the other node get them from Ray's object store into a node-local file named by the
    digest, and build the very CLIP the same weights give from a local file."""
    import hashlib

    import numpy as np
    import torch

    from vadclip.clip.backbone import build_open_clip
    from vadclip.model.config import TINY_CLIP
    from vadclip.io.features import read_feature_rows, row_features

    buf = io.BytesIO()
    torch.save(build_open_clip(TINY_CLIP, None).state_dict(), buf)   # the seeded random-init tiny CLIP
    s3.put_object(Bucket=BUCKET, Key="models/tiny.pt", Body=buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    rec = sample_videos["good"][0]
    feats = {}
    for name, spec in (("bucket", ClipSpec(TINY_CLIP, f"s3://{BUCKET}/models/tiny.pt")), ("init", ClipSpec.tiny())):
        s = run_extract(rec["path"], str(tmp_path / name), ExtractOptions(clip=spec, batch_size=8, precision="fp32"),
                        address=two_nodes["address"], log=lambda *_: None)
        assert s["videos_ok"] == 1
        feats[name] = row_features(read_feature_rows(str(tmp_path / name / "features"))[0])
    np.testing.assert_array_equal(feats["bucket"], feats["init"])
    node_copy = two_nodes["scratch"] / "clip-weights" / f"{digest}.pt"
    assert node_copy.read_bytes() == buf.getvalue()           # written on the worker node from the object store
    assert len(list((two_nodes["scratch"] / "clip-weights" / "uri").iterdir())) == 1   # the driver's one download
