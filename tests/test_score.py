import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from vadclip import VadConfig, build_model
from vadclip.model.checkpoint import save_checkpoint
from vadclip.model.config import ClipSpec
from vadclip.jobs.extract import ExtractOptions, feature_dir, run_extract
from vadclip.io.features import read_feature_rows
from vadclip.errors import InputError
from vadclip.io.gt import write_gt
from vadclip.tracking.registry import log_and_register
from vadclip.video.samples import make_sample_set, write_manifest
from vadclip.jobs.score import ScoreOptions, find_events, read_events, run_score
from vadclip.testing.direct import collate
from vadclip.train.batches import batch_plan, make_optimizer, train_step

CLASSES = ["Normal", "Explosion", "Fighting", "RoadAccidents"]


def test_find_events_merges_and_thresholds_in_seconds():
    a = np.array([0.1, 0.9, 0.8, 0.2, 0.95, 0.1, 0.1, 0.1, 0.7, 0.1])
    p = np.tile([0.1, 0.6, 0.3], (10, 1))
    # 10 fps, 16-frame snippets: one snippet is 1.6 s; the one-snippet gap (1.6 s) merges under a 2 s gap
    ev = find_events(a, p, ["N", "A", "B"], 10.0, 160, ScoreOptions(threshold=0.5, merge_gap_s=2.0).rule())
    assert [(e["start_frame"], e["end_frame"]) for e in ev] == [(16, 80), (128, 144)]
    assert ev[0]["start_s"] == pytest.approx(1.6) and ev[0]["class_name"] == "A"
    ev = find_events(a, p, ["N", "A", "B"], 10.0, 160,
                     ScoreOptions(threshold=0.5, merge_gap_s=0.0, min_duration_s=3.0).rule())
    assert [(e["start_frame"], e["end_frame"]) for e in ev] == [(16, 48)]     # 3.2 s; the 1.6 s ones dropped
    # hysteresis: opened above 0.85, stays open while above 0.85 - 0.7
    ev = find_events(a, p, ["N", "A", "B"], 10.0, 160,
                     ScoreOptions(threshold=0.85, hysteresis=0.7, merge_gap_s=0.0).rule())
    assert [(e["start_frame"], e["end_frame"]) for e in ev] == [(16, 80)]


def test_flags_override_the_operating_point_field_by_field():
    from vadclip.metrics.operating import EventRule, OperatingPoint

    op = OperatingPoint(EventRule(0.7, low=0.6, min_duration_s=2.0, merge_gap_s=3.0), {"target_fa_per_hour": 1.0})
    opts, rec = ScoreOptions(merge_gap_s=0.5).resolve(op, "file op.json")
    r = opts.rule()
    assert (r.threshold, r.low, r.min_duration_s, r.merge_gap_s) == pytest.approx((0.7, 0.6, 2.0, 0.5))
    assert rec["source"] == "file op.json" and rec["flags_over_it"] == ["merge_gap_s"]
    assert rec["chosen_by"] == {"target_fa_per_hour": 1.0}
    opts, rec = ScoreOptions().resolve(None)
    assert opts.threshold == 0.5 and opts.merge_gap_s == 1.0 and rec["source"].startswith("none")
    with pytest.raises(InputError, match="--hysteresis -1"):
        ScoreOptions(hysteresis=-1).resolve(None)


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


@pytest.mark.slow
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
    # a video's events are in its score row, committed with it: no table of their own to lag behind
    assert s["events"] == sum(len(r["events"]) for r in rows.values()) and not (out / "events").exists()
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
    assert summary["label_rule"]["classes"] == CLASSES     # how the model reads labels, for a rebuilt report
    # one row per event, flattened from the score rows (read_events; DuckDB's unnest(events))
    events = read_events(str(out)).to_pylist()
    want = sorted((v, i, ev["start_frame"], ev["end_frame"], ev["class_name"]) for v, r in rows.items()
                  for i, ev in enumerate(r["events"]))
    assert want and sorted((e["video_id"], e["event"], e["start_frame"], e["end_frame"], e["class_name"])
                           for e in events) == want
    assert {e["model"] for e in events} == {"models:/scorer/1"} and json.loads(events[0]["rule"])["threshold"] == 0.5
    assert len(events) == summary["events"]
    # the video that failed extraction in the same run is counted and listed, in the report too
    assert summary["videos_failed_total"] == 1 and [f["video_id"] for f in summary["failed_videos"]] == ["broken"]
    assert "<h2>Failed videos (1)</h2>" in page and "broken" in page.split("<h2>Failed videos")[1]
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
    assert len(read_events(str(out))) == len(events)   # none twice
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


def test_the_events_table_of_folders_scored_before_goes_with_the_next_run(trained, tmp_path):
    """Until 2026-12-07 `score` also kept the events in OUT/events/, a Delta table committed
    after the scores they came from. The next scoring run of such a folder removes it and
    says so in one line; the score rows hold the events (read_events)."""
    from deltalake import write_deltalake

    from vadclip.io.features import feature_row, write_feature_table
    from vadclip.jobs.score import EVENTS_SCHEMA

    d, _, _ = trained
    feats = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    write_feature_table([feature_row("a", "a.mp4", "Normal", 0, 25.0, 320, feats)], str(tmp_path / "f" / "p.parquet"))
    write_deltalake(str(tmp_path / "o" / "events"), EVENTS_SCHEMA.empty_table())
    said = []
    s = run_score(str(d / "model.pt"), str(tmp_path / "o"), features=str(tmp_path / "f"),
                  opts=ScoreOptions(threshold=0.0), log=said.append)
    assert s["videos_scored"] == 1 and not (tmp_path / "o" / "events").exists()
    (line,) = [x for x in said if "events" in x and "removed" in x]
    assert str(tmp_path / "o" / "events") in line and "column events" in line
    assert read_events(str(tmp_path / "o")).num_rows == s["events"] > 0


def _files(folder):
    """{relative path: (size, mtime_ns)} of every file under ``folder``."""
    import os

    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            st = os.stat(os.path.join(root, n))
            out[os.path.relpath(os.path.join(root, n), folder)] = (st.st_size, st.st_mtime_ns)
    return out


def test_a_refused_score_run_changes_nothing_in_its_folders(trained, tmp_path, capsys):
    """Everything `score --videos` can refuse (the crop asked for, the features folder's
    provenance) is checked before its first lease: a refused run exits 2 in one line and
    leaves every file of OUT as it was, score rows included (issue #43 item 3). Before, a
    run that extraction's checks refused (`--crops 5` against features of one crop) had
    already taken the scores folder's lease and rewritten its rule and model records."""
    from cli_output import one_error_line
    from vadclip.cli import main

    d, test_man, _ = trained
    out = tmp_path / "out"
    s = run_score(str(d / "model.pt"), str(out), videos=str(d / "test.csv"), log=lambda *_: None)
    assert s["videos_scored"] == len(test_man)
    before = _files(out)
    scan = ["score", "--model", str(d / "model.pt"), "--videos", str(d / "test.csv"), "--out", str(out),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    capsys.readouterr()
    for flags, named in ((["--rescore", "all", "--crop", "3"], "crop 3"), (["--crops", "5"], "crops")):
        assert main(scan + flags) == 2, flags
        one_error_line(capsys.readouterr().err, named)
        assert _files(out) == before, flags
    assert len(pq.read_table(str(out / "scores")).to_pylist()) == len(test_man)


@pytest.mark.slow
def test_calibrate_then_score_uses_the_operating_point(trained, tmp_path, capsys):
    """The user's path: `vadclip calibrate` on validation features stores the operating
    point on the registered version; a later `vadclip score` without --threshold uses it
    (summary, report, MLflow); a flag overrides one field; a model file keeps its
    operating point in a file beside it."""
    import shutil

    import mlflow

    from cli_output import one_error_line, result_json
    from vadclip.cli import main
    from vadclip.tracking.runs import use_experiment

    d, test_man, test_gt = trained
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    use_experiment("t", uri)
    with mlflow.start_run() as run:
        pass
    log_and_register(str(d / "model.pt"), run.info.run_id, uri, "cal", "champion", "auc", 0.9, log=lambda *_: None)
    val_man, val_gt = make_sample_set(str(tmp_path / "val"), 3, 3, seed=3, prefix="va")
    write_manifest(val_man, str(tmp_path / "val.csv"))
    write_gt(val_gt, str(tmp_path / "val_gt.parquet"))
    run_extract(str(tmp_path / "val.csv"), str(tmp_path / "val_ext"), ExtractOptions(clip=ClipSpec.tiny(),
                batch_size=32), log=lambda *_: None)
    val = feature_dir(str(tmp_path / "val_ext"))
    test_feats = tmp_path / "test_ext"
    write_manifest(test_man, str(tmp_path / "test_only.csv"))
    run_extract(str(tmp_path / "test_only.csv"), str(test_feats), ExtractOptions(clip=ClipSpec.tiny(), batch_size=32),
                log=lambda *_: None)

    # target recall without ground truth: one line, exit 2
    capsys.readouterr()
    assert main(["calibrate", "--model", "models:/cal@champion", "--features", val, "--target-recall", "0.9",
                 "--tracking-uri", uri]) == 2
    one_error_line(capsys.readouterr().err, "--gt")

    assert main(["calibrate", "--model", "models:/cal@champion", "--features", val, "--gt",
                 str(tmp_path / "val_gt.parquet"), "--target-fa-per-hour", "1", "--merge-gap-s", "0.5",
                 "--tracking-uri", uri]) == 0
    cal = result_json(capsys.readouterr().out)
    op = cal["operating_point"]
    assert cal["videos"] == 6 and cal["stored"] == ["models:/cal/1 (model version tag)"]
    assert op["chosen_by"]["target_fa_per_hour"] == 1.0 and op["on_validation"]["false_alarms_per_hour"] <= 1.0
    assert op["rule"]["merge_gap_s"] == 0.5 and op["rule"]["threshold"] == cal["threshold"]
    # the normal hours are those of the three normal validation videos
    client = mlflow.tracking.MlflowClient(uri)
    tags = client.get_model_version("cal", "1").tags
    assert json.loads(tags["vadclip_operating_point"])["rule"]["threshold"] == cal["threshold"]
    cal_run = client.get_run(tags["vadclip_operating_point_run"])
    assert {"operating_curve.png", "operating_point.json", "operating_curve.json"} <= \
        {a.path for a in client.list_artifacts(cal_run.info.run_id)}
    assert cal_run.data.metrics["false_alarms_per_hour"] == op["on_validation"]["false_alarms_per_hour"]

    # score without --threshold: the version's operating point
    out = tmp_path / "out"
    assert main(["score", "--model", "models:/cal@champion", "--features", str(feature_dir(str(test_feats))),
                 "--gt", str(d / "gt.parquet"), "--out", str(out), "--tracking-uri", uri]) == 0
    s = result_json(capsys.readouterr().out)
    summary = json.loads((out / "score_summary.json").read_text())
    assert summary["threshold"] == cal["threshold"] and summary["merge_gap_s"] == 0.5
    assert summary["operating_point"]["source"] == "models:/cal/1 (model version tag)"
    assert summary["operating_point"]["flags_over_it"] == []
    assert s["event_recall"] == summary["event_recall"] and "false_alarms_per_hour" in summary
    rows = pq.read_table(str(out / "scores")).to_pylist()
    rule = ScoreOptions(threshold=cal["threshold"], merge_gap_s=0.5).rule()
    for r in rows:                       # the events are those of the calibrated rule
        expect = rule.events(np.asarray(r["anomaly"]), 16 / r["fps"])
        assert [(e["start_frame"] // 16, -(-e["end_frame"] // 16)) for e in r["events"]] == \
            [(a, min(b, -(-r["num_frames"] // 16))) for a, b in expect]
    page = (out / "report" / "index.html").read_text()
    assert "models:/cal/1 (model version tag)" in page and "img/operating_curve.png" in page
    assert f"score &gt; {cal['threshold']:.4g}" in page
    run = client.get_run(s["mlflow_run_id"])
    assert run.data.tags["vadclip.operating_point"] == "models:/cal/1 (model version tag)"
    assert "event_recall" in run.data.metrics
    assert "operating_curve.png" in {a.path for a in client.list_artifacts(run.info.run_id)}

    # a flag wins over the operating point, field by field, and is recorded
    assert main(["score", "--model", "models:/cal@champion", "--features", str(feature_dir(str(test_feats))),
                 "--out", str(tmp_path / "out2"), "--threshold", "0.99", "--tracking-uri", uri]) == 0
    s2 = result_json(capsys.readouterr().out)
    assert s2["threshold"] == 0.99 and s2["merge_gap_s"] == 0.5
    assert s2["operating_point"]["flags_over_it"] == ["threshold"]
    # the first output resumed under another rule (a recalibration between two nightly scans): not
    # refused; the videos scored keep their rows, each recording the version and rule that made it
    assert main(["score", "--model", "models:/cal@champion", "--features", str(feature_dir(str(test_feats))),
                 "--out", str(out), "--threshold", "0.99", "--tracking-uri", uri]) == 0
    s4 = result_json(capsys.readouterr().out)
    assert s4["videos_scored"] == 0 and s4["videos_skipped"] == len(rows)
    again = pq.read_table(str(out / "scores")).to_pylist()
    assert {r["model_version"] for r in again} == {"models:/cal/1"}
    assert {json.loads(r["rule"])["threshold"] for r in again} == {cal["threshold"]}
    events = read_events(str(out)).to_pylist()
    assert events and {e["model"] for e in events} == {"models:/cal/1"}

    # a model file: the operating point goes beside it, and score finds it there
    model = tmp_path / "m" / "model.pt"
    model.parent.mkdir()
    shutil.copy(d / "model.pt", model)
    assert main(["calibrate", "--model", str(model), "--features", val, "--target-fa-per-hour", "0",
                 "--tracking-uri", uri]) == 0
    cal0 = result_json(capsys.readouterr().out)
    assert cal0["stored"] == [str(model) + ".operating-point.json"]
    assert cal0["operating_point"]["on_validation"]["false_alarms"] == 0
    assert main(["score", "--model", str(model), "--features", str(feature_dir(str(test_feats))),
                 "--out", str(tmp_path / "out3"), "--tracking-uri", uri]) == 0
    s3 = result_json(capsys.readouterr().out)
    assert s3["threshold"] == cal0["threshold"]
    assert s3["operating_point"]["source"] == f"file {model}.operating-point.json"
    # evaluate reports the same operating point's false alarms per hour, event recall and precision
    assert main(["evaluate", "--model", str(model), "--features", str(feature_dir(str(test_feats))),
                 "--gt", str(d / "gt.parquet"), "--tracking-uri", uri]) == 0
    ev = result_json(capsys.readouterr().out)
    at = ev["operating_point"]
    assert at["source"] == f"file {model}.operating-point.json" and at["threshold"] == cal0["threshold"]
    s3_summary = json.loads((tmp_path / "out3" / "score_summary.json").read_text())
    s3_report = tmp_path / "out3"
    assert main(["report", str(s3_report), "--gt", str(d / "gt.parquet")]) == 0
    rep = result_json(capsys.readouterr().out)["at_operating_point"]
    for k in ("false_alarms_per_hour", "event_recall", "event_precision"):   # one measure, two commands
        assert rep[k] == pytest.approx(at[k], nan_ok=True), k
    assert s3_summary["operating_point"]["source"] == at["source"]


@pytest.mark.parametrize("labels", ["all null", "mixed", "absent"])
def test_scoring_features_whatever_their_label_column_holds(ray_local, tmp_path, labels):
    """Extract once, score with several models: an unlabeled archive's features (its
    label column all null, mixed, or absent) score like labeled ones (issue #35)."""
    import pyarrow as pa

    from vadclip import tiny_config
    from vadclip.io.features import write_feature_table
    from vadclip.model.network import build_model as build
    from vadclip.testing.synthetic import make_feature_set

    cfg = tiny_config("custom", classes=CLASSES, visual_length=32, visual_layers=1)
    rows, _ = make_feature_set(cfg, 3, 3, 32, seed=4)
    for i, r in enumerate(rows):
        r["label"] = None if labels != "mixed" or i % 2 else r["label"]
    path = tmp_path / "feats.parquet"
    write_feature_table(rows, str(path))
    if labels == "absent":
        pq.write_table(pq.read_table(path).drop(["label"]), path)
    save_checkpoint(build(cfg), str(tmp_path / "m.pt"))
    s = run_score(str(tmp_path / "m.pt"), str(tmp_path / "out"), features=str(path), opts=ScoreOptions(max_plots=2),
                  tracking_uri=f"sqlite:///{tmp_path}/m.db", log=lambda *_: None)
    assert s["videos_scored"] == len(rows) and s["videos_failed"] == 0
    got = pq.read_table(str(tmp_path / "out" / "scores"), columns=["video_id", "label"]).to_pylist()
    want = {r["video_id"]: (r["label"] if labels == "mixed" else None) for r in rows}
    assert {g["video_id"]: g["label"] for g in got} == want
    assert pa.types.is_string(pq.read_table(str(tmp_path / "out" / "scores")).schema.field("label").type)


def test_camera_columns_reach_features_scores_and_wall_clock_events(trained, tmp_path):
    """Issue #35: a manifest with two cameras, a site and each recording's start; its
    other columns travel into feature, score and event rows, and events get wall-clock
    times (start_time + offset, UTC) where they are read flat (read_events)."""
    import csv
    from datetime import datetime, timedelta, timezone

    import pyarrow.compute as pc

    from vadclip.report.html import _safe

    d, test_man, _ = trained
    starts = {"cam1": "2026-11-01T08:00:00+01:00", "cam2": "2026-11-01 09:30:00"}   # the second without a zone: UTC
    man = tmp_path / "cams.csv"
    with open(man, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "label", "video_id", "camera", "site", "start_time"])
        w.writeheader()
        for i, r in enumerate(test_man):
            cam = "cam1" if i % 2 == 0 else "cam2"
            w.writerow({**r, "camera": cam, "site": "" if cam == "cam2" else "depot", "start_time": starts[cam]})
    out = tmp_path / "out"
    s = run_score(str(d / "model.pt"), str(out), videos=str(man), opts=ScoreOptions(threshold=0.5), log=lambda *_: None)
    assert s["videos_scored"] == len(test_man)
    cam_of = {r["video_id"]: ("cam1" if i % 2 == 0 else "cam2") for i, r in enumerate(test_man)}
    utc = {"cam1": datetime(2026, 11, 1, 7, 0, tzinfo=timezone.utc), "cam2": datetime(2026, 11, 1, 9, 30, tzinfo=timezone.utc)}

    feats = read_feature_rows(str(out / "features"))
    assert {r["video_id"]: json.loads(r["meta"])["camera"] for r in feats} == cam_of
    cam1 = next(json.loads(r["meta"]) for r in feats if cam_of[r["video_id"]] == "cam1")
    assert cam1 == {"camera": "cam1", "site": "depot", "start_time": "2026-11-01T07:00:00+00:00"}
    assert all("site" not in json.loads(r["meta"]) for r in feats if cam_of[r["video_id"]] == "cam2")  # empty cell: left out
    scores = {r["video_id"]: r for r in pq.read_table(str(out / "scores")).to_pylist()}
    assert {v: json.loads(r["meta"])["camera"] for v, r in scores.items()} == cam_of

    events = read_events(str(out))
    assert events.num_rows == s["events"] > 0
    for e in events.to_pylist():
        t0 = utc[cam_of[e["video_id"]]]
        assert e["camera"] == cam_of[e["video_id"]]
        assert e["start_time"] == t0 + timedelta(seconds=e["start_s"]) and e["end_time"] == t0 + timedelta(seconds=e["end_s"])
    by_camera = events.group_by("camera").aggregate([("event", "count")]).to_pylist()
    assert sum(r["event_count"] for r in by_camera) == events.num_rows
    assert pc.min(events["start_time"]).as_py() >= utc["cam1"]
    # the report groups the flags by camera, and its events say where and when
    page = (out / "report" / "index.html").read_text()
    assert "<h2>By camera (2)</h2>" in page and "<th>camera</th><th>time</th>" in page
    flagged = {c: sum(1 for v, r in scores.items() if r["flagged"] and cam_of[v] == c) for c in ("cam1", "cam2")}
    for cam, n in flagged.items():
        assert f"<tr><td>{cam}</td><td class='num' data-v='{sum(1 for c in cam_of.values() if c == cam)}'>" in page
        assert f"data-v='{n}'>{n}</td>" in page.split("<h2>By camera")[1].split(f"<tr><td>{cam}</td>")[1].split("</tr>")[0]
    # key frames of each flagged video, decoded in Ray tasks on the workers (not by the driver)
    for v, r in scores.items():
        if r["flagged"]:
            assert (out / "report" / "img" / f"{_safe(v)}_e0_peak.jpg").stat().st_size > 0, v
    first = events.sort_by([("score", "descending")]).to_pylist()[0]
    assert first["start_time"].strftime("%Y-%m-%d %H:%M:%S UTC") in page

    # scoring the feature set again (another model, another folder) keeps the columns
    again = run_score(str(d / "model.pt"), str(tmp_path / "again"), features=str(out / "features"),
                      opts=ScoreOptions(threshold=0.5), log=lambda *_: None)
    assert again["videos_scored"] == len(test_man)
    ev2 = read_events(str(tmp_path / "again"))
    assert sorted(ev2.column("camera").to_pylist()) == sorted(events.column("camera").to_pylist())
    assert sorted(ev2.column("start_time").to_pylist()) == sorted(events.column("start_time").to_pylist())


def test_a_start_time_that_is_no_time_is_refused_naming_the_manifest(tmp_path):
    from vadclip.jobs.manifest import load_manifest

    (tmp_path / "a.mp4").write_bytes(b"x")
    man = tmp_path / "m.csv"
    man.write_text("path,camera,start_time\na.mp4,cam1,yesterday morning\n")
    with pytest.raises(InputError, match=r"m\.csv: .*a\.mp4: start_time 'yesterday morning' is not an ISO 8601 time"):
        load_manifest(str(man))


def test_calibrate_by_camera_then_score_applies_each_cameras_operating_point(trained, tmp_path, capsys):
    """Issue #35: `calibrate --by camera` on a two-camera validation set stores one
    operating point per camera and a fallback; `score` judges each video by its camera's
    (a camera calibration never saw: the fallback), the events table records the rule
    each event was found under, and the summary and the report show every threshold."""
    import csv

    from cli_output import result_json
    from vadclip.cli import main
    from vadclip.metrics.operating import EventRule

    d, test_man, _ = trained

    def with_cameras(rows, path, cams):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["path", "label", "video_id", "camera"])
            w.writeheader()
            for r, cam in zip(rows, cams):
                w.writerow({**r, "camera": cam})

    val_man, val_gt = make_sample_set(str(tmp_path / "val"), 4, 4, seed=3, prefix="va")   # normal ones first
    with_cameras(val_man, tmp_path / "val.csv", ["cam1", "cam2"] * 4)
    write_gt(val_gt, str(tmp_path / "val_gt.parquet"))
    eo = ExtractOptions(clip=ClipSpec.tiny(), batch_size=32)
    run_extract(str(tmp_path / "val.csv"), str(tmp_path / "val_ext"), eo, log=lambda *_: None)
    cam_of = {r["video_id"]: c for r, c in zip(test_man, ["cam1", "cam2", "cam9"] * 2)}
    with_cameras(test_man, tmp_path / "test.csv", [cam_of[r["video_id"]] for r in test_man])
    run_extract(str(tmp_path / "test.csv"), str(tmp_path / "test_ext"), eo, log=lambda *_: None)
    op_file = str(tmp_path / "op.json")
    capsys.readouterr()
    assert main(["calibrate", "--model", str(d / "model.pt"), "--features", feature_dir(str(tmp_path / "val_ext")),
                 "--gt", str(tmp_path / "val_gt.parquet"), "--target-fa-per-hour", "0", "--by", "camera",
                 "--merge-gap-s", "0", "--operating-point", op_file]) == 0
    cal = result_json(capsys.readouterr().out)
    thr = cal["thresholds_by"]
    assert cal["by"] == "camera" and sorted(thr) == ["cam1", "cam2"] and thr["cam1"] != thr["cam2"]
    assert cal["threshold"] == max(thr.values())      # zero alarms over both: the noisier camera's threshold
    stored = json.loads(open(op_file).read())
    assert stored["by"] == "camera" and {g: x["rule"]["threshold"] for g, x in stored["groups"].items()} == thr

    out = tmp_path / "out"
    assert main(["score", "--model", str(d / "model.pt"), "--features", feature_dir(str(tmp_path / "test_ext")),
                 "--operating-point", op_file, "--out", str(out)]) == 0
    s = result_json(capsys.readouterr().out)
    assert s["operating_point"]["threshold_by_value"] == thr and s["operating_point"]["by"] == "camera"
    want = {v: thr.get(c, cal["threshold"]) for v, c in cam_of.items()}      # cam9: the fallback
    rows = pq.read_table(str(out / "scores")).to_pylist()
    assert len(rows) == len(test_man)
    for r in rows:                         # each video's events are its camera's rule's
        rule = EventRule(want[r["video_id"]], merge_gap_s=0.0)
        expect = rule.events(np.asarray(r["anomaly"]), 16 / r["fps"])
        assert [(e["start_frame"] // 16, -(-e["end_frame"] // 16)) for e in r["events"]] == \
            [(a, min(b, -(-r["num_frames"] // 16))) for a, b in expect], r["video_id"]
        assert r["flagged"] == bool(expect)
    events = read_events(str(out)).to_pylist()
    for e in events:
        assert json.loads(e["rule"])["threshold"] == want[e["video_id"]] and e["camera"] == cam_of[e["video_id"]]
    page = (out / "report" / "index.html").read_text()
    assert "threshold by camera" in page and all(f"{c}: {thr[c]:.3g}" in page for c in thr)
    # evaluate judges each video by its camera's rule too
    assert main(["evaluate", "--model", str(d / "model.pt"), "--features", feature_dir(str(tmp_path / "test_ext")),
                 "--gt", str(d / "gt.parquet"), "--operating-point", op_file]) == 0
    assert result_json(capsys.readouterr().out)["operating_point"]["threshold_by_value"] == thr
    # calibrated again, each camera now too small for its own point (the same overall one):
    # resuming the folder is not refused; its rows keep the per-camera rules that made them
    assert main(["calibrate", "--model", str(d / "model.pt"), "--features", feature_dir(str(tmp_path / "val_ext")),
                 "--gt", str(tmp_path / "val_gt.parquet"), "--target-fa-per-hour", "0", "--by", "camera",
                 "--min-videos", "5", "--merge-gap-s", "0", "--operating-point", op_file]) == 0
    again = result_json(capsys.readouterr().out)
    assert again["threshold"] == cal["threshold"] and again["thresholds_by"] == {}
    assert set(again["operating_point"]["chosen_by"]["fallback_groups"]) == {"cam1", "cam2"}
    assert main(["score", "--model", str(d / "model.pt"), "--features", feature_dir(str(tmp_path / "test_ext")),
                 "--operating-point", op_file, "--out", str(out)]) == 0
    assert result_json(capsys.readouterr().out)["videos_scored"] == 0
    kept = pq.read_table(str(out / "scores")).to_pylist()
    assert {r["video_id"]: json.loads(r["rule"])["threshold"] for r in kept} == want


def test_the_containers_creation_time_gives_events_their_wall_clock_time(trained, tmp_path):
    """Issue #35: a camera's MP4 records when it started (creation_time in its header);
    with no start_time in the manifest, that is the recording's start: feature and score
    rows carry it (start_time_from: container) and events get wall-clock times from it.
    A manifest's start_time wins over the container's; a file without one has none."""
    import csv
    from datetime import datetime, timedelta, timezone

    import av

    d, test_man, _ = trained
    stamped = tmp_path / "cam3_0700.mp4"
    c = av.open(str(stamped), "w")
    c.metadata["creation_time"] = "2026-11-01T07:00:00.000000Z"      # what an NVR's export says
    st = c.add_stream("libx264", rate=25)
    st.width, st.height, st.pix_fmt = 96, 64, "yuv420p"
    rng = np.random.default_rng(0)
    for i in range(96):
        frame = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
        for pk in st.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(pk)
    for pk in st.encode():
        c.mux(pk)
    c.close()
    import shutil

    told = tmp_path / "cam3_copy.mp4"
    shutil.copy(stamped, told)
    man = tmp_path / "m.csv"
    with open(man, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "video_id", "start_time"])
        w.writeheader()
        w.writerow({"path": str(stamped), "video_id": "stamped", "start_time": ""})
        w.writerow({"path": str(told), "video_id": "told", "start_time": "2026-11-01T09:00:00Z"})
        w.writerow({"path": test_man[0]["path"], "video_id": "plain", "start_time": ""})
    out = tmp_path / "out"
    s = run_score(str(d / "model.pt"), str(out), videos=str(man), opts=ScoreOptions(threshold=0.0),
                  log=lambda *_: None)
    assert s["videos_scored"] == 3
    meta = {r["video_id"]: json.loads(r["meta"] or "{}") for r in read_feature_rows(str(out / "features"))}
    assert meta["stamped"] == {"start_time": "2026-11-01T07:00:00+00:00", "start_time_from": "container"}
    assert meta["told"] == {"start_time": "2026-11-01T09:00:00+00:00"}          # the manifest's wins
    assert meta["plain"] == {}
    events = read_events(str(out)).to_pylist()
    assert {e["video_id"] for e in events} == {"stamped", "told", "plain"}      # threshold 0: every video
    t0 = {"stamped": datetime(2026, 11, 1, 7, tzinfo=timezone.utc), "told": datetime(2026, 11, 1, 9, tzinfo=timezone.utc)}
    for e in events:
        if e["video_id"] == "plain":
            assert e["start_time"] is None
        else:
            want = t0[e["video_id"]] + timedelta(seconds=e["start_s"])
            assert abs((e["start_time"].replace(tzinfo=timezone.utc) - want).total_seconds()) < 1e-3
