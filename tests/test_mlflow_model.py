"""The registered MLflow model is logged as code with a signature and an input
example: loading it unpickles nothing of the project and scores like the checkpoint."""
import dataclasses
import os

import mlflow
import numpy as np
import pytest

from vadclip import build_model, tiny_config
from vadclip.model.checkpoint import save_checkpoint
from vadclip.model.network import score_video
from vadclip.tracking.registry import load_scoring_model, log_and_register
from vadclip.tracking.runs import use_experiment


def _register(tmp_path, name, auc=0.7, file="m.pt", seed=None):
    """A tiny random-init model saved to ``file`` and registered as ``name`` (alias
    champion when its auc is the best) in a sqlite MLflow store: (config, store URI, result)."""
    cfg = tiny_config("custom", classes=["Normal", "Fire", "Fight"], visual_length=32)
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    save_checkpoint(build_model(cfg), str(tmp_path / file))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    use_experiment("e", uri)
    with mlflow.start_run() as run:
        pass
    return cfg, uri, log_and_register(str(tmp_path / file), run.info.run_id, uri, name, "champion", "auc", auc,
                                      log=lambda *_: None)


def test_a_run_given_no_store_after_one_given_a_store_goes_to_the_default(tmp_path, monkeypatch):
    """MLflow's set_tracking_uri writes MLFLOW_TRACKING_URI into the process's environment; a
    Python user (a notebook, the demo) who scores once into a store and then with none must
    land in the documented default (./runs/mlflow.db), as the user's own variable would say."""
    from vadclip.tracking.runs import use_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = f"sqlite:///{tmp_path}/other/mlflow.db"
    use_experiment("first", elsewhere)
    assert mlflow.get_tracking_uri() == elsewhere and "MLFLOW_TRACKING_URI" not in os.environ
    default = use_store(None)
    assert default == f"sqlite:///{tmp_path}/runs/mlflow.db" and mlflow.get_tracking_uri() == default
    assert mlflow.get_experiment_by_name("first") is None        # the other store's experiment is not here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)          # the user's own variable still counts
    assert use_store(None) == elsewhere and os.environ["MLFLOW_TRACKING_URI"] == elsewhere


def test_model_from_code_with_signature(tmp_path):
    _, uri, out = _register(tmp_path, "vad-code")
    info = mlflow.models.get_model_info("models:/vad-code@champion")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 32)
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["anomaly", "p_Normal", "p_Fire", "p_Fight"]
    local = mlflow.artifacts.download_artifacts(out["model_uri"], dst_path=str(tmp_path / "dl"))
    files = {f for _, _, fs in os.walk(local) for f in fs}
    assert "pyfunc.py" in files and "python_model.pkl" not in files   # code, not a pickle
    x = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    df = mlflow.pyfunc.load_model("models:/vad-code@champion").predict(x)
    a, p = score_video(load_scoring_model(str(tmp_path / "m.pt")), x)
    np.testing.assert_allclose(df["anomaly"].to_numpy(), a, atol=1e-6)
    np.testing.assert_allclose(df["p_Fight"].to_numpy(), p[:, 2], atol=1e-6)


def test_scoring_a_registered_version_runs_no_code_stored_in_the_registry(tmp_path):
    """Whoever can write to the registry must not run code on the scoring cluster: the
    version's stored pyfunc.py is replaced with code that writes a file; vadclip loads
    the weights from the checkpoint artifact into the installed code, scores as before,
    and the file is never written (MLflow's own pyfunc loader, shown last, does run it).
    The logged model pins the installed vadclip, so serving it resolves no other one."""
    import subprocess
    import sys

    from vadclip._version import __version__

    _, uri, _ = _register(tmp_path, "vad-evil")
    stored = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs
              if f == "pyfunc.py" and "mlartifacts" in d]
    assert len(stored) == 1
    pwned = tmp_path / "pwned"
    with open(stored[0], "a") as fh:
        fh.write(f"\nopen({str(pwned)!r}, 'w').write('code from the registry ran')\n")
    reqs = [p for d, _, fs in os.walk(tmp_path) for p in (os.path.join(d, f) for f in fs)
            if p.endswith("requirements.txt") and "mlartifacts" in p]
    assert f"vadclip=={__version__}" in open(reqs[0]).read()
    x = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    a, p = score_video(load_scoring_model("models:/vad-evil@champion", uri), x)
    a0, _ = score_video(load_scoring_model(str(tmp_path / "m.pt")), x)
    np.testing.assert_allclose(a, a0, atol=1e-6)
    assert not pwned.exists()
    # the same version through MLflow's pyfunc loader runs the stored code (in another process)
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.set_tracking_uri({uri!r}); "
                    "mlflow.pyfunc.load_model('models:/vad-evil@champion')"], capture_output=True, timeout=300)
    assert pwned.exists()


def test_a_job_scores_with_one_version_and_each_row_says_which(ray_local, tmp_path):
    """The alias resolves to a version once per job, recorded on every row: next month's
    champion resuming last month's --out is not refused (the rows already there keep
    theirs); a new --out is scored by it whole."""
    import pyarrow.parquet as pq

    from vadclip.io.features import write_feature_table
    from vadclip.jobs.score import ScoreOptions, run_score
    from vadclip.testing.synthetic import make_feature_set

    cfg, uri, _ = _register(tmp_path, "vad-pin", auc=0.5, file="m0.pt")
    rows, _ = make_feature_set(cfg, 3, 3, 32, seed=2)
    write_feature_table(rows, str(tmp_path / "feats.parquet"))
    s = run_score("models:/vad-pin@champion", str(tmp_path / "out"), features=str(tmp_path / "feats.parquet"),
                  opts=ScoreOptions(max_plots=0), tracking_uri=uri, log=lambda *_: None)
    assert s["model_version_uri"] == "models:/vad-pin/1" and s["videos_scored"] == 6
    _register(tmp_path, "vad-pin", auc=0.9, file="m1.pt", seed=7)  # next month's champion: version 2
    said = []
    s = run_score("models:/vad-pin@champion", str(tmp_path / "out"), features=str(tmp_path / "feats.parquet"),
                  opts=ScoreOptions(max_plots=0), tracking_uri=uri, log=said.append)
    assert s["model_version_uri"] == "models:/vad-pin/2" and s["videos_scored"] == 0 and s["videos_skipped"] == 6
    assert any("its last run scored with models:/vad-pin/1" in line for line in said)
    assert {r["model_version"] for r in pq.read_table(str(tmp_path / "out" / "scores")).to_pylist()} == \
        {"models:/vad-pin/1"}
    s = run_score("models:/vad-pin@champion", str(tmp_path / "out2"), features=str(tmp_path / "feats.parquet"),
                  opts=ScoreOptions(max_plots=0), tracking_uri=uri, log=lambda *_: None)
    assert s["model_version_uri"] == "models:/vad-pin/2" and s["model_alias"] == "champion"
    # version 1's own file is the same weights: it resumes the first folder (nothing left to score)
    s = run_score(str(tmp_path / "m0.pt"), str(tmp_path / "out"), features=str(tmp_path / "feats.parquet"),
                  opts=ScoreOptions(max_plots=0), log=lambda *_: None)
    assert s["videos_scored"] == 0 and s["videos_skipped"] == 6


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_with_snippet_scores(tmp_path):
    """The registered pyfunc flavour served by the real `mlflow models serve` (environment
    manager local) on 127.0.0.1: a [T, D] feature input gets T per-snippet anomaly scores
    and class probabilities, equal to scoring the checkpoint directly."""
    import json
    import subprocess
    import sys
    import urllib.request

    from localserver import free_port, wait_until_answering

    _, uri, _ = _register(tmp_path, "vad-serve")
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/vad-serve@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", proc, "mlflow models serve", 180)
        x = np.random.default_rng(3).normal(size=(12, 32)).astype(np.float32)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": x.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        out = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
        assert len(out) == 12 and set(out[0]) == {"anomaly", "p_Normal", "p_Fire", "p_Fight"}
        a, p = score_video(load_scoring_model(str(tmp_path / "m.pt")), x)
        np.testing.assert_allclose([r["anomaly"] for r in out], a, atol=1e-5)
        np.testing.assert_allclose([r["p_Fight"] for r in out], p[:, 2], atol=1e-5)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
