"""The registered MLflow model is logged as code with a signature and an input
example: loading it unpickles nothing of the project and scores like the checkpoint."""
import os

import mlflow
import numpy as np

from vadclip import build_model, tiny_config
from vadclip.model.checkpoint import save_checkpoint
from vadclip.model.network import score_video
from vadclip.tracking.registry import load_scoring_model, log_and_register
from vadclip.tracking.runs import use_experiment


def test_model_from_code_with_signature(tmp_path):
    cfg = tiny_config("custom", classes=["Normal", "Fire", "Fight"], visual_length=32)
    model = build_model(cfg)
    save_checkpoint(model, str(tmp_path / "m.pt"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    use_experiment("e", uri)
    with mlflow.start_run() as run:
        pass
    out = log_and_register(str(tmp_path / "m.pt"), run.info.run_id, uri, "vad-code", "champion", "auc", 0.7,
                           log=lambda *_: None)
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
