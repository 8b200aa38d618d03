"""Many seeds at once (issue #28): `vadclip train --seeds` trains one model per seed
concurrently on the local Ray, MLflow holds a parent run with the mean, spread and range
of every metric and a child run per seed, the best seed is registered and the others are
not; a seed trained again on this CPU (as a point of a small grid) gives exactly the same
metrics; the grid reports each configuration and registers the best."""
import json

import mlflow
import numpy as np
import pytest

from cli_output import one_error_line, result_json
from vadclip import tiny_config
from vadclip.cli import main
from vadclip.errors import InputError
from vadclip.io.features import write_feature_table
from vadclip.io.gt import write_gt
from vadclip.jobs.seeds import aggregate, config_label, parse_grid, parse_seeds
from vadclip.testing.synthetic import make_feature_set
from vadclip.train.batches import deal


def test_seed_lists_and_the_aggregate():
    assert parse_seeds("0, 1,2", None, 7) == [0, 1, 2]
    assert parse_seeds(None, 3, 7) == [7, 8, 9]
    for bad, what in (("0,0", "repeated"), ("a,b", "integers"), ("", "no seed")):
        with pytest.raises(InputError, match=what):
            parse_seeds(bad, None, 0)
    with pytest.raises(InputError, match="not both"):
        parse_seeds("1", 2, 0)
    agg = aggregate([{"auc": 0.8, "loss": 1.0, "map_avg": 0.2, "epoch": 3},
                     {"auc": 0.9, "loss": 2.0, "map_avg": float("nan"), "epoch": 1},
                     {"auc": 0.7, "loss": 3.0, "map_avg": 0.4, "epoch": 2}])
    assert sorted(agg) == ["auc"]             # training bookkeeping is not aggregated, nor a metric with a NaN
    assert agg["auc"]["mean"] == pytest.approx(0.8) and agg["auc"]["std"] == pytest.approx(0.1)   # sample std
    assert (agg["auc"]["min"], agg["auc"]["max"], agg["auc"]["n"]) == (0.7, 0.9, 3)


def test_grid_points_are_every_combination_of_scalar_config_fields():
    cfg = tiny_config("ucf")
    pts = parse_grid("lr=1e-5,2e-5; attn_window=8,16", cfg)
    assert pts == [{"lr": 1e-5, "attn_window": 8}, {"lr": 1e-5, "attn_window": 16},
                   {"lr": 2e-5, "attn_window": 8}, {"lr": 2e-5, "attn_window": 16}]
    assert config_label(pts[1]) == "lr1e-05_attn_window16" and parse_grid(None, cfg) == [{}]
    for bad, what in (("milestones=1,2", "cannot|not a config field"), ("lr=fast", "not a float"),
                      ("lr=", "no values"), ("lr=1;lr=2", "twice")):
        with pytest.raises(InputError, match=what):
            parse_grid(bad, cfg)


def test_deal_gives_every_rank_both_sides_by_the_seed_alone():
    cfg = tiny_config("ucf")
    vids = [(f"n{i}", "Normal") for i in range(7)] + [(f"a{i}", "Abuse") for i in range(5)]
    hands = deal(vids, cfg, 2, seed=3)
    assert deal(list(reversed(vids)), cfg, 2, seed=3) == hands              # not the order rows arrive in
    assert sorted(v for h in hands for v in h) == sorted(v for v, _ in vids)  # each video once
    for h in hands:
        assert sum(v.startswith("n") for v in h) in (3, 4) and sum(v.startswith("a") for v in h) in (2, 3)
    assert deal(vids, cfg, 2, seed=4) != hands


@pytest.fixture(scope="module")
def feature_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    cfg = tiny_config("ucf", visual_length=32, lr=1e-3, batch_size=4, epochs=2, milestones=[100])
    rows, _ = make_feature_set(cfg, 12, 12, 32, seed=1)
    erows, egt = make_feature_set(cfg, 4, 4, 32, seed=2, prefix="ev")
    write_feature_table(rows, str(d / "train.parquet"))
    write_feature_table(erows, str(d / "eval.parquet"))
    write_gt(egt, str(d / "gt.parquet"))
    (d / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    return cfg, d


@pytest.mark.slow
def test_many_seeds_and_a_grid_parent_children_best_registered_and_a_seed_reproduces(ray_local, feature_sets, tmp_path,
                                                                          capsys):
    cfg, d = feature_sets
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["train", "--train", str(d / "train.parquet"), "--eval", str(d / "eval.parquet"), "--gt",
            str(d / "gt.parquet"), "--config", str(d / "cfg.json"), "--seeds", "0,1,2", "--num-workers", "1",
            "--cpus-per-worker", "0.5", "--storage", str(tmp_path / "runs"), "--run-name", "ms",
            "--register", "vad-seeds", "--tracking-uri", uri, "--experiment", "seeds"]
    capsys.readouterr()
    assert main(argv) == 0
    out = result_json(capsys.readouterr().out)
    assert out["seeds"] == [0, 1, 2] and len(out["per_seed"]) == 3 and out["max_concurrent"] == 3
    per = {p["seed"]: p for p in out["per_seed"]}
    aucs = [per[s]["best_metrics"]["auc"] for s in (0, 1, 2)]
    assert len({per[s]["best_metrics"]["loss"] for s in (0, 1, 2)}) == 3      # the seeds really differ
    assert out["aggregate"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert out["aggregate"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    assert {"ap", "auc_abnormal", "map_avg", "map_iou01"} <= set(out["aggregate"])
    best = max((0, 1, 2), key=lambda s: (per[s]["best_metrics"]["auc"]))
    assert out["best_seed"] == best and out["registered_version"] == 1 and out["promoted"]

    client = mlflow.tracking.MlflowClient(uri)
    parent = client.get_run(out["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["auc_mean"] == pytest.approx(np.mean(aucs))
    assert parent.data.metrics["auc_max"] == pytest.approx(max(aucs)) and "map_avg_std" in parent.data.metrics
    assert parent.data.tags["vadclip.best_seed"] == str(best)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_id for c in children) == sorted(p["mlflow_run_id"] for p in out["per_seed"])
    assert {c.data.params["seed"] for c in children} == {"0", "1", "2"}
    assert {"seed_curves.png", "seeds.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    # the best seed is the one registered version; the others stay runs
    versions = client.search_model_versions("name = 'vad-seeds'")
    assert len(versions) == 1 and versions[0].run_id == per[best]["mlflow_run_id"]

    # the same command again resumes: every seed finished, nothing trained or registered twice
    assert main(argv) == 0
    out2 = result_json(capsys.readouterr().out)
    assert out2["aggregate"] == out["aggregate"] and out2["mlflow_parent_run_id"] == out["mlflow_parent_run_id"]
    assert out2["already_registered"] and len(client.search_model_versions("name = 'vad-seeds'")) == 1

    assert main(argv[:-4] + ["--seeds", "1,1", "--tracking-uri", uri]) == 2
    one_error_line(capsys.readouterr().err, "--seeds 1,1", "repeated")


    # a grid of one point with seed 1: the configuration above, trained again on this CPU — the same
    # metrics as seed 1 of the run above, exactly (the parsing of larger grids is tested above)
    assert main(["train", "--train", str(d / "train.parquet"), "--eval", str(d / "eval.parquet"), "--gt",
                 str(d / "gt.parquet"), "--config", str(d / "cfg.json"), "--grid", "lr=1e-3", "--seeds", "1",
                 "--num-workers", "1", "--cpus-per-worker", "0.5", "--storage", str(tmp_path / "runs"),
                 "--run-name", "g", "--register", "vad-grid", "--tracking-uri", uri, "--experiment", "grid"]) == 0
    out = result_json(capsys.readouterr().out)
    assert [p["config"] for p in out["grid"]] == [{"lr": 1e-3}]
    again = out["grid"][0]["per_seed"][0]["best_metrics"]
    for k, v in per[1]["best_metrics"].items():
        if k != "epoch_time_s" and not k.startswith("worker_peak_"):
            assert again[k] == v, k
    means = [p["aggregate"]["auc"]["mean"] for p in out["grid"]]
    assert out["best_config"] == out["grid"][int(np.argmax(means))]["config"]
    top = client.get_run(out["mlflow_grid_run_id"])
    assert top.data.tags["vadclip.best_config"] == config_label(out["best_config"])
    assert top.data.metrics["lr0.001.auc_mean"] == pytest.approx(means[0])
    parents = client.search_runs([top.info.experiment_id], f"tags.mlflow.parentRunId = '{top.info.run_id}'")
    assert sorted(p.info.run_id for p in parents) == sorted(p["mlflow_parent_run_id"] for p in out["grid"])
    for p in out["grid"]:            # each configuration's parent holds its seed
        kids = client.search_runs([top.info.experiment_id], f"tags.mlflow.parentRunId = '{p['mlflow_parent_run_id']}'")
        assert [k.info.run_id for k in kids] == [p["per_seed"][0]["mlflow_run_id"]]
    (v,) = client.search_model_versions("name = 'vad-grid'")
    best = next(p for p in out["grid"] if p["config"] == out["best_config"])
    assert v.run_id == best["per_seed"][0]["mlflow_run_id"] and out["registered_version"] == 1
