"""No secret leaves the process (issue #34): a whole run as a user runs it (extract,
train with --register, score from the registry; each a `vadclip` command joining a
two-node Ray cluster with --address) with object-storage credentials in the
environment and an MLflow tracking server reached by a URI that carries a password.
Then every place a secret could end up is read and searched for each secret value:
the commands' stdout and stderr, every object they wrote to the bucket, every log
file of every Ray node, the job table Ray keeps (runtime_env), the MLflow tracking
server's database and artifacts, and every param, tag and metric key of its runs and
model versions.

The nodes are started with the same credentials in their environment, as a node's
own credential chain (instance profile, IRSA, workload identity) gives them: that is
how the workers reach the bucket; nothing is forwarded from the shell."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from localserver import free_port, wait_until_answering
from s3server import s3_server

pytestmark = pytest.mark.slow
BUCKET = "vad"
CLASSES = ["Normal", "Explosion", "Fighting", "RoadAccidents"]
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAQSECRETKEYID7731",
           "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-s3cr3t-K7MDENG-bPxRfiCY",
           "AWS_SESSION_TOKEN": "FwoGZXIvYXdzE-sess10n-t0ken-Dk8Qz"}
PASSWORD = "pa55-w0rd-9f3e1c"


def _files_under(root):
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                yield p


def _leaks(text, where):
    """Each secret value (and the password) found in text, as `where: NAME`."""
    found = [f"{where}: {k}" for k, v in SECRETS.items() if v in text]
    if PASSWORD in text:
        found.append(f"{where}: tracking password")
    return found


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1 (sqlite + local artifacts, proxied)."""
    port = free_port()
    db, art = tmp_path / "mlflow-server.db", tmp_path / "mlflow-artifacts"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(art),
                             "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/health", proc, "the MLflow tracking server", 120)
        yield {"port": port, "db": db, "artifacts": art}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def test_no_secret_in_any_output_log_or_mlflow_record_of_a_whole_run(sample_videos, mlflow_server, tmp_path,
                                                                       monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from vadclip.io.gt import write_gt

    with s3_server(BUCKET) as s3:
        for v in sample_videos["good"] + sample_videos["bad"]:
            if os.path.exists(v["path"]):
                s3.upload_file(v["path"], BUCKET, f"archive/videos/{os.path.basename(v['path'])}")
        rows = [f"videos/{os.path.basename(v['path'])},{v['label']},{v['video_id']}"
                for v in sample_videos["good"] + sample_videos["bad"]]
        s3.put_object(Bucket=BUCKET, Key="archive/manifest.csv",
                      Body=("path,label,video_id\n" + "\n".join(rows) + "\n").encode())
        for k, v in SECRETS.items():              # moto accepts any key; these are what must not leak
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "vad")
        gt = f"s3://{BUCKET}/archive/gt.parquet"
        write_gt(sample_videos["gt"], gt)

        had_local = ray.is_initialized()
        ray.shutdown()
        ray_tmp = tempfile.mkdtemp(prefix="rsec", dir="/tmp")     # short: Ray's socket paths
        os.makedirs("/tmp/ray", exist_ok=True)    # where Cluster records its address, whatever temp_dir says
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 0, "include_dashboard": False, "temp_dir": ray_tmp})
        cluster.add_node(num_cpus=4, temp_dir=ray_tmp)
        cluster.wait_for_nodes()
        tracking = f"http://vad:{PASSWORD}@127.0.0.1:{mlflow_server['port']}"
        env = {**os.environ, "VADCLIP_PROGRESS_BARS": "0"}
        feats, scores = f"s3://{BUCKET}/feat", f"s3://{BUCKET}/scores"
        commands = [
            ["extract", f"s3://{BUCKET}/archive/manifest.csv", "--out", feats, "--tiny-clip", "--batch-size", "8"],
            ["train", "--train", f"{feats}/features", "--eval", f"{feats}/features", "--gt", gt,
             "--preset", "custom", "--classes", ",".join(CLASSES), "--visual-length", "32", "--batch-size", "2",
             "--epochs", "2", "--num-workers", "1", "--cpus-per-worker", "0.5", "--storage", f"s3://{BUCKET}/train",
             "--run-name", "sec", "--tiny-clip", "--register", "vad-sec", "--experiment", "sec-exp", "--tracking-uri", tracking],
            ["score", "--model", "models:/vad-sec@champion", "--features", f"{feats}/features", "--gt", gt,
             "--out", scores, "--max-plots", "2", "--tracking-uri", tracking, "--experiment", "sec-exp"],
        ]
        leaks, outputs = [], {}
        try:
            for cmd in commands:
                p = subprocess.run([sys.executable, "-m", "vadclip.cli", *cmd, "--address", cluster.address],
                                   capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
                outputs[cmd[0]] = p.stdout + p.stderr
                assert p.returncode == 0, f"vadclip {cmd[0]} failed:\n{(p.stdout + p.stderr)[-3000:]}"
                leaks += _leaks(p.stdout + p.stderr, f"vadclip {cmd[0]} stdout/stderr")
            # what Ray keeps of each job (its runtime_env included), read while the cluster lives
            ray.init(address=cluster.address, logging_level="ERROR")
            jobs = ray._private.state.state.job_table()
            ray.shutdown()
            leaks += _leaks(repr(jobs), "Ray's job table")
            # every object in the bucket the run wrote (and the inputs' neighbours)
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                    for o in page.get("Contents", [])]
            written = [k for k in keys if not k.startswith("archive/")]
            assert any(k.startswith("feat/features/") for k in written)
            assert any(k.startswith("scores/scores/") for k in written)
            assert "scores/score_summary.json" in written and "scores/report/index.html" in written
            for k in written:
                body = s3.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode("latin-1")
                leaks += _leaks(body, f"s3://{BUCKET}/{k}")
        finally:
            cluster.shutdown()
            if had_local:
                from conftest import init_local_ray

                init_local_ray()
        # every log file of every node of the cluster
        logs = list(_files_under(ray_tmp))
        assert any(p.endswith(".log") or p.endswith(".out") or p.endswith(".err") for p in logs)
        for p in logs:
            if "/runtime_resources/" in p:          # packages Ray unpacked (the job's working_dir), not logs
                continue
            with open(p, "rb") as f:
                leaks += _leaks(f.read().decode("latin-1"), p)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # MLflow: every run's params, tags and metric keys, every registered model and version's tags
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"http://127.0.0.1:{mlflow_server['port']}")
    exps = client.search_experiments()
    runs = [r for e in exps for r in client.search_runs([e.experiment_id])]
    assert any(r.data.params for r in runs) and client.search_model_versions("name='vad-sec'")
    for r in runs:
        leaks += _leaks(json.dumps({"params": r.data.params, "tags": r.data.tags, "metrics": list(r.data.metrics),
                                    "name": r.info.run_name, "artifact_uri": r.info.artifact_uri}),
                        f"MLflow run {r.info.run_id}")
    for m in client.search_registered_models():
        leaks += _leaks(json.dumps({"tags": m.tags, "description": m.description}), f"registered model {m.name}")
        for mv in client.search_model_versions(f"name='{m.name}'"):
            leaks += _leaks(json.dumps({"tags": mv.tags, "source": mv.source, "description": mv.description}),
                            f"model version {m.name}/{mv.version}")
    leaks += _leaks(mlflow_server["db"].read_bytes().decode("latin-1"), "the MLflow server's database")
    arts = list(_files_under(mlflow_server["artifacts"]))
    assert arts                                   # the registered model's files really are there to search
    for p in arts:
        with open(p, "rb") as f:
            leaks += _leaks(f.read().decode("latin-1"), p)
    assert all(o.strip() for o in outputs.values())     # each command said something that was searched
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
