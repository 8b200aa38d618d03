import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from vadclip import VadConfig, build_model
from vadclip.model.checkpoint import save_checkpoint
from vadclip.model.config import ClipSpec
from vadclip.jobs.extract import ExtractOptions, feature_dir, run_extract
from vadclip.io.features import read_feature_rows
from vadclip.io.gt import write_gt
from vadclip.tracking.registry import log_and_register
from vadclip.video.samples import make_sample_set, write_manifest
from vadclip.jobs.score import ScoreOptions, find_events, run_score
from vadclip.testing.direct import collate
from vadclip.train.batches import batch_plan, make_optimizer, train_step

CLASSES = ["Normal", "Explosion", "Fighting", "RoadAccidents"]


def test_find_events_merges_and_thresholds():
    a = np.array([0.1, 0.9, 0.8, 0.2, 0.95, 0.1, 0.1, 0.1, 0.7, 0.1])
    p = np.tile([0.1, 0.6, 0.3], (10, 1))
    ev = find_events(a, p, ["N", "A", "B"], 10.0, 160, ScoreOptions(threshold=0.5, merge_gap=1))
    assert [(e["start_frame"], e["end_frame"]) for e in ev] == [(16, 80), (128, 144)]
    assert ev[0]["start_s"] == pytest.approx(1.6) and ev[0]["class_name"] == "A"
    ev = find_events(a, p, ["N", "A", "B"], 10.0, 160, ScoreOptions(threshold=0.5, merge_gap=0, min_snippets=2))
    assert [(e["start_frame"], e["end_frame"]) for e in ev] == [(16, 48)]


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    cfg = VadConfig.from_preset("custom", classes=CLASSES, visual_length=32, visual_layers=1, lr=1e-3, batch_size=4,
                           epochs=1, clip=ClipSpec.tiny())
    man, _ = make_sample_set(str(d / "train"), 10, 10, seed=1, prefix="tr")
    write_manifest(man, str(d / "train.csv"))
    eo = ExtractOptions(clip=ClipSpec.tiny(), batch_size=32)
    run_extract(str(d / "train.csv"), str(d / "ext"), eo, log=lambda *_: None)
    rows = read_feature_rows(feature_dir(str(d / "ext")))
    model = build_model(cfg)
    opt, _ = make_optimizer(model, cfg)
    for ep in range(40):
        for b in batch_plan([r["label"] for r in rows], cfg, ep):
            train_step(model, opt, collate([rows[i] for i in b], cfg), cfg)
    save_checkpoint(model, str(d / "model.pt"))
    test_man, test_gt = make_sample_set(str(d / "test"), 3, 3, seed=2, prefix="te")
    (d / "test" / "broken.mp4").write_bytes(b"definitely not a video")
    write_manifest(test_man + [{"path": str(d / "test" / "broken.mp4"), "label": "Normal", "video_id": "broken"}],
                   str(d / "test.csv"))
    write_gt(test_gt, str(d / "gt.parquet"))
    return d, test_man, test_gt


def test_score_videos_end_to_end_resume_and_registry(trained, tmp_path):
    d, test_man, test_gt = trained
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    import mlflow

    from vadclip.tracking.runs import use_experiment

    use_experiment("t", uri)   # artifacts beside the store, not in ./mlruns
    with mlflow.start_run() as run:
        pass
    reg = log_and_register(str(d / "model.pt"), run.info.run_id, uri, "scorer", "champion", "auc", 0.9,
                           log=lambda *_: None)
    assert reg["promoted"]
    out = tmp_path / "out"
    s = run_score("models:/scorer@champion", str(out), videos=str(d / "test.csv"), gt_path=str(d / "gt.parquet"),
                  opts=ScoreOptions(threshold=0.5), tracking_uri=uri, log=lambda *_: None)
    assert s["videos_scored"] == 6 and s["extract"]["videos_failed"] == 1
    errors = pq.read_table(str(out / "errors")).to_pylist()
    assert [e["video_id"] for e in errors] == ["broken"]
    rows = {r["video_id"]: r for r in pq.read_table(str(out / "scores")).to_pylist()}
    assert len(rows) == 6
    for r in rows.values():
        assert len(r["anomaly"]) == r["snippet_count"]
        assert len(r["class_probs"]) == r["snippet_count"] * len(CLASSES)
    # planted anomalies: abnormal videos score above normal ones, and events overlap them
    gt = {g["video_id"]: g for g in test_gt}
    ab = [rows[v]["video_score"] for v in gt]
    norm = [r["video_score"] for v, r in rows.items() if v not in gt]
    assert np.mean(ab) > np.mean(norm)
    hits = 0
    for v, g in gt.items():
        for ev in rows[v]["events"]:
            if ev["start_frame"] < g["end_frame"] and ev["end_frame"] > g["start_frame"]:
                hits += 1
    assert hits >= 1
    assert s["auc"] > 0.5 and 0 <= s["map_avg"] <= 1
    # the review report: a page per video (max_plots being 50), flagged ones first with key frames
    flagged = {v for v, r in rows.items() if r["flagged"]}
    assert (out / "report" / "index.html").is_file() and s["report"] == str(out / "report" / "index.html")
    page = (out / "report" / "index.html").read_text()
    assert s["plots"] == 6 == len(list((out / "report" / "img").glob("*_timeline.png")))
    assert all(f"<h3>{v}</h3>" in page for v in flagged)
    assert "name scorer · version 1 · alias @champion" in page
    # MLflow conventions: the archive as a dataset input, the summary as a dict, the
    # report and the timelines (log_figure) as artifacts
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(s["mlflow_run_id"])
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "archive" and json.loads(inp.dataset.profile)["num_rows"] == 6
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report", "timelines", "score_summary.json"} <= arts
    assert "index.html" in {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "report")}
    for r in rows.values():   # one rule: flagged ⇔ events, and a flagged video is never "Normal"
        assert r["flagged"] == bool(r["events"])
        assert (r["predicted_class"] != "Normal") == r["flagged"]
    summary = json.loads((out / "score_summary.json").read_text())
    assert summary["videos_scored"] == 6
    # one streaming pipeline: the writers scored each video where they assembled it, the same
    # scores as scoring the features they wrote
    again = run_score(str(d / "model.pt"), str(tmp_path / "again"), features=str(out / "features"),
                      log=lambda *_: None)
    assert again["videos_scored"] == 6
    for r in pq.read_table(str(tmp_path / "again" / "scores")).to_pylist():
        np.testing.assert_allclose(r["anomaly"], rows[r["video_id"]]["anomaly"], rtol=0, atol=1e-6)
        assert r["events"] == rows[r["video_id"]]["events"]
    # a run interrupted after the features were written but before their scores: the next
    # run extracts nothing and scores those videos from their features
    import shutil

    gap = tmp_path / "gap"
    shutil.copytree(out / "features", gap / "features")
    shutil.copytree(out / "errors", gap / "errors")
    g = run_score(str(d / "model.pt"), str(gap), videos=str(d / "test.csv"), log=lambda *_: None)
    assert g["extract"]["videos_ok"] == 0 and g["videos_scored"] == 6
    assert sorted(r["video_id"] for r in pq.read_table(str(gap / "scores")).to_pylist()) == sorted(rows)

    # resume: nothing re-scored, nothing duplicated
    s2 = run_score(str(d / "model.pt"), str(out), features=str(out / "features"), log=lambda *_: None)
    assert s2["videos_scored"] == 0 and s2["videos_skipped"] == 6
    table = pq.read_table(str(out / "scores")).to_pylist()
    assert len(table) == 6
    # totals are streamed from the part files and cover the earlier run's rows too
    assert s2["videos_total_in_output"] == 6
    assert s2["anomalous_videos"] == sum(r["flagged"] for r in table) == s["anomalous_videos"]
    assert s2["events"] == sum(len(r["events"]) for r in table) == s["events"]


def test_bad_feature_rows_are_recorded_not_dropped(trained, tmp_path):
    from vadclip.io.features import feature_row, write_feature_table

    d, _, _ = trained
    good = np.random.default_rng(0).normal(size=(20, 32)).astype(np.float32)
    rows = [feature_row("ok", "ok.mp4", "Normal", 0, 25.0, 320, good),
            feature_row("wrongdim", "wrongdim.mp4", "Normal", 0, 25.0, 320, np.zeros((20, 48), np.float32)),
            feature_row("nan", "nan.mp4", "Normal", 0, 25.0, 32, np.full((2, 32), np.nan, np.float32))]
    write_feature_table(rows, str(tmp_path / "f" / "part-0.parquet"))
    s = run_score(str(d / "model.pt"), str(tmp_path / "o"), features=str(tmp_path / "f"), log=lambda *_: None)
    assert s["videos_scored"] == 1 and s["videos_failed"] == 2
    errs = {e["video_id"]: e["error"] for e in pq.read_table(str(tmp_path / "o" / "score_errors")).to_pylist()}
    assert "wrong feature dim 48" in errs["wrongdim"] and "wrongdim.mp4" in errs["wrongdim"]
    assert "NaN" in errs["nan"]
