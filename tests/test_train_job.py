import json
import os

import mlflow
import numpy as np
import pytest

from vadclip import tiny_config
from vadclip.io.features import write_feature_table
from vadclip.io.gt import write_gt
from vadclip.model.network import score_video
from vadclip.tracking.registry import load_scoring_model
from vadclip.testing.synthetic import make_feature_set
from vadclip.jobs.train import run_train


@pytest.fixture(scope="module")
def feature_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("fs")
    cfg = tiny_config("ucf", visual_length=64, lr=1e-3, batch_size=4, epochs=8, milestones=[100])
    rows, _ = make_feature_set(cfg, 24, 24, 32, seed=1)
    erows, egt = make_feature_set(cfg, 8, 8, 32, seed=2, prefix="ev")
    write_feature_table(rows, str(d / "train.parquet"))
    write_feature_table(erows, str(d / "eval.parquet"))
    write_gt(egt, str(d / "gt.parquet"))
    return cfg, d, erows


@pytest.mark.slow
def test_two_worker_training_registers_a_model(ray_local, feature_sets, tmp_path):
    cfg, d, erows = feature_sets
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    s = run_train(str(d / "train.parquet"), cfg, str(tmp_path / "runs"), run_name="t1",
                  eval_path=str(d / "eval.parquet"), gt_path=str(d / "gt.parquet"), num_workers=2,
                  cpus_per_worker=1, tracking_uri=uri, register_name="vad-test", log=lambda *_: None)
    assert s["best_metrics"]["auc"] > 0.9, s
    assert s["registered_version"] == 1 and s["promoted"]
    client = mlflow.tracking.MlflowClient(uri)
    hist = client.get_metric_history(s["mlflow_run_id"], "loss")
    assert len(hist) == cfg.epochs
    assert hist[-1].value < hist[0].value
    assert len(client.get_metric_history(s["mlflow_run_id"], "auc")) == cfg.epochs
    # each rank runs batch_plan over its own ~24 rows with 2 + 2 per batch: at most 12 // 2
    # steps, the same on both ranks (the smaller shard decides), every video at most once
    steps = {m.value for m in client.get_metric_history(s["mlflow_run_id"], "steps")}
    assert len(steps) == 1 and 1 <= steps.pop() <= 6
    rss, private = (sorted(client.get_metric_history(s["mlflow_run_id"], f"worker_peak_{k}_mb"), key=lambda m: m.step)
                    for k in ("rss", "private"))
    assert len(rss) == len(private) == cfg.epochs
    assert all(100 < p.value <= r.value < 4000 for p, r in zip(private, rss))
    inputs = {i.dataset.name: i for i in client.get_run(s["mlflow_run_id"]).inputs.dataset_inputs}
    assert sorted(inputs) == ["eval", "train"]
    assert json.loads(inputs["train"].dataset.profile)["num_rows"] == 48
    assert inputs["train"].tags[0].value == "training" and inputs["eval"].dataset.digest

    registered = load_scoring_model("models:/vad-test@champion", tracking_uri=uri)
    local = load_scoring_model(s["best_checkpoint"])
    pyf = mlflow.pyfunc.load_model("models:/vad-test@champion")
    for r in erows[:3]:
        feats = np.asarray(r["features"], np.float32).reshape(r["snippet_count"], r["feature_dim"])
        a1, p1 = score_video(registered, feats)
        a2, p2 = score_video(local, feats)
        np.testing.assert_allclose(a1, a2, atol=1e-6)
        np.testing.assert_allclose(p1, p2, atol=1e-6)
        df = pyf.predict(feats)
        np.testing.assert_allclose(df["anomaly"].to_numpy(), a2, atol=1e-6)
        assert list(df.columns[:2]) == ["anomaly", "p_Normal"]

    # a worse second model (another run, a lower auc) is registered but does not take the alias
    from vadclip.tracking.registry import log_and_register

    with mlflow.start_run(experiment_id=client.get_run(s["mlflow_run_id"]).info.experiment_id) as run2:
        pass
    s2 = log_and_register(s["best_checkpoint"], run2.info.run_id, uri, "vad-test", "champion", "auc",
                          s["best_metrics"]["auc"] - 0.1, best_epoch=1, log=lambda *_: None)
    assert s2["registered_version"] == 2 and not s2["promoted"]
    assert int(client.get_model_version_by_alias("vad-test", "champion").version) == 1


@pytest.mark.slow
def test_worker_killed_mid_epoch_resumes_from_checkpoint(faults, feature_sets, tmp_path):
    """Rank 0's worker process dies (os._exit) half-way through epoch 2: Ray Train
    restarts the worker group, which resumes from the epoch-1 checkpoint."""
    cfg, d, _ = feature_sets
    cfg = cfg.replace(epochs=3)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fired = faults.arm("exit_in_epoch", 2)
    s = run_train(str(d / "train.parquet"), cfg, str(tmp_path / "runs"), run_name="crashy",
                  num_workers=2, tracking_uri=uri, max_failures=1,
                  log=lambda *_: None)
    assert os.path.exists(fired)                                       # it did die
    client = mlflow.tracking.MlflowClient(uri)
    epochs = [m.step for m in client.get_metric_history(s["mlflow_run_id"], "loss")]
    # epoch 1 was checkpointed before the kill; epoch 2 was redone from it, once, then epoch 3
    assert sorted(epochs) == [1, 2, 3]
    assert s["best_metrics"]["epoch"] in (1, 2, 3) and os.path.exists(s["best_checkpoint"])


@pytest.mark.slow
def test_official_recipe_evaluates_within_epochs_and_keeps_the_best(ray_local, feature_sets, tmp_path):
    """--recipe official: the UCF loop's evaluation every N samples (here 16: twice per
    epoch), the best model so far reloaded at each epoch end, so the final checkpoint is
    the best evaluation point's model — with two DDP ranks agreeing on "best"."""
    from vadclip.model.checkpoint import load_model_file
    from vadclip.io.gt import read_gt
    from vadclip.metrics.evaluate import evaluate

    cfg, d, erows = feature_sets
    cfg = cfg.replace(epochs=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    s = run_train(str(d / "train.parquet"), cfg, str(tmp_path / "runs"), run_name="official",
                  eval_path=str(d / "eval.parquet"), gt_path=str(d / "gt.parquet"), num_workers=2,
                  tracking_uri=uri, recipe="official", eval_every_samples=16, log=lambda *_: None)
    client = mlflow.tracking.MlflowClient(uri)
    points = client.get_metric_history(s["mlflow_run_id"], "step_auc")
    assert len(points) == 4                                   # steps 2 and 4 of both epochs
    best = max(p.value for p in points)
    assert s["best_metrics"]["score"] == pytest.approx(best)
    model = load_model_file(s["best_checkpoint"])
    again = evaluate(model, erows, read_gt(str(d / "gt.parquet")), model.cfg)
    assert again["auc"] == pytest.approx(best, abs=1e-6)     # the checkpoint is that model
    assert client.get_run(s["mlflow_run_id"]).data.params["recipe"] == "paper"   # "official" is the old name


def test_without_eval_nothing_is_called_auc_and_a_changed_config_stops_in_one_line(ray_local, feature_sets,
                                                                                     tmp_path):
    """A training without --eval is ranked by minus its training loss, under that name:
    its version carries no AUC, and it never takes @champion from a version ranked by
    AUC.  Re-running the same run name and storage with another setting stops in one
    line saying what to do, and leaves the finished run as it was."""
    import dataclasses

    from vadclip.errors import InputError
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.network import build_model
    from vadclip.tracking.registry import log_and_register
    from vadclip.tracking.runs import use_experiment

    cfg, d, _ = feature_sets
    cfg = dataclasses.replace(cfg, epochs=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    use_experiment("vadclip", uri)
    save_checkpoint(build_model(cfg), str(tmp_path / "evaluated.pt"))
    with mlflow.start_run() as run:
        pass
    log_and_register(str(tmp_path / "evaluated.pt"), run.info.run_id, uri, "vad-loss", "champion", "auc", 0.8,
                     best_epoch=1, log=lambda *_: None)
    s = run_train(str(d / "train.parquet"), cfg, str(tmp_path / "runs"), run_name="noeval", num_workers=1,
                  cpus_per_worker=1, tracking_uri=uri, register_name="vad-loss", log=lambda *_: None)
    assert s["metric"] == "neg_train_loss" and "auc" not in s["best_metrics"]
    assert s["registered_version"] == 2 and not s["promoted"]
    client = mlflow.tracking.MlflowClient(uri)
    tags = client.get_model_version("vad-loss", "2").tags
    assert "auc" not in tags and float(tags["neg_train_loss"]) < 0
    assert "best_neg_train_loss" in client.get_run(s["mlflow_run_id"]).data.metrics
    assert int(client.get_model_version_by_alias("vad-loss", "champion").version) == 1
    with pytest.raises(InputError, match=r"run 'noeval' under .* was started with other settings \(lr 0\.001 vs "
                                         r"0\.0005.*give another --run-name"):
        run_train(str(d / "train.parquet"), dataclasses.replace(cfg, lr=5e-4), str(tmp_path / "runs"),
                  run_name="noeval", num_workers=1, cpus_per_worker=1, tracking_uri=uri, register_name="vad-loss",
                  log=lambda *_: None)
    assert client.get_run(s["mlflow_run_id"]).info.status == "FINISHED"
