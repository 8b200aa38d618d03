"""What a new user hits first: unlabeled archives, duplicate entries, interrupted jobs,
one MLflow store, early input checks and one-line CLI errors (issue #9)."""
import csv
import logging
import os
import time

import mlflow
import pyarrow.parquet as pq
import pytest

from cli_output import one_error_line, result_json
from vadclip import tiny_config
from vadclip.model.checkpoint import save_checkpoint
from vadclip.cli import build_parser, main
from vadclip.jobs.manifest import load_manifest
from vadclip.io.parts import PartWriter
from vadclip.io.features import ERROR_SCHEMA, write_feature_table
from vadclip.io.gt import write_gt
from vadclip.model.network import build_model
from vadclip.video.samples import make_sample_set
from vadclip.testing.synthetic import make_feature_set

CLASSES = ["Normal", "Explosion", "Fighting"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three real unlabeled videos in a folder and a (random-weight) model file."""
    d = tmp_path_factory.mktemp("archive")
    man, _ = make_sample_set(str(d / "videos"), 2, 1, frames_range=(40, 90), seed=5, prefix="cam")
    cfg = tiny_config("custom", classes=CLASSES, visual_length=32, visual_layers=1)
    save_checkpoint(build_model(cfg), str(d / "model.pt"))
    return d, [m["path"] for m in man]


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _score_cli(capsys, *args):
    rc = main(["score", *args, "--flush-seconds", "0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return result_json(out)


def test_every_kind_of_source_may_be_unlabeled(archive, tmp_path):
    d, paths = archive
    _write_csv(str(tmp_path / "nolabel.csv"), ["path"], [[p] for p in paths])
    _write_csv(str(tmp_path / "some.csv"), ["path", "label"], [[paths[0], "Normal"], [paths[1], ""], [paths[2], ""]])
    for src in (str(d / "videos"), str(d / "videos" / "cam*.mp4"), str(tmp_path / "nolabel.csv")):
        recs = load_manifest(src)
        assert sorted(r["path"] for r in recs) == sorted(paths) and all(r["label"] is None for r in recs), src
    assert [r["label"] for r in load_manifest(str(tmp_path / "some.csv"))] == ["Normal", None, None]


@pytest.mark.parametrize("source", ["dir", "some_labels_empty"])
def test_unlabeled_archive_scores(ray_local, archive, tmp_path, capsys, source):
    """All-unlabeled (a folder) and partly labelled manifests score end to end; the
    first used to end in ArrowTypeError at the score writer."""
    d, paths = archive
    if source == "dir":
        src = str(d / "videos")
    else:
        src = str(tmp_path / "m.csv")
        _write_csv(src, ["path", "label"], [[paths[0], "Normal"], [paths[1], ""], [paths[2], ""]])
    s = _score_cli(capsys, "--model", str(d / "model.pt"), "--videos", src, "--out", str(tmp_path / "o"),
                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert s["videos_scored"] == 3 and s["videos_failed"] == 0
    rows = pq.read_table(str(tmp_path / "o" / "scores")).to_pylist()
    assert sorted(r["video_id"] for r in rows) == ["cam000", "cam001", "cam002"]
    labels = {r["video_id"]: r["label"] for r in rows}
    assert labels["cam001"] is None and labels["cam002"] is None
    assert labels["cam000"] == ("Normal" if source == "some_labels_empty" else None)
    run = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/m.db").get_run(s["mlflow_run_id"])
    assert run.data.metrics["videos_scored"] == 3


def test_duplicate_manifest_entries_give_one_row_per_video(ray_local, archive, tmp_path, capsys):
    d, paths = archive
    man = str(tmp_path / "dup.csv")
    _write_csv(man, ["path", "label"], [[paths[0], "Normal"], [paths[1], "Explosion"], [paths[0], "Normal"],
                                        [paths[1], "Explosion"]])
    assert len(load_manifest(man)) == 2
    s = _score_cli(capsys, "--model", str(d / "model.pt"), "--videos", man, "--out", str(tmp_path / "o"),
                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert s["videos_scored"] == 2
    assert len(pq.read_table(str(tmp_path / "o" / "features")).to_pylist()) == 2
    assert len(pq.read_table(str(tmp_path / "o" / "scores")).to_pylist()) == 2
    # the same path with two different labels is a mistake in the manifest: one line, exit 2
    _write_csv(man, ["path", "label"], [[paths[0], "Normal"], [paths[0], "Explosion"]])
    assert main(["extract", man, "--out", str(tmp_path / "x"), "--tiny-clip"]) == 2
    line = one_error_line(capsys.readouterr().err, "listed twice with different labels")
    assert paths[0] in line


def test_feature_set_holding_a_video_twice_scores_it_once(ray_local, archive, tmp_path):
    from vadclip.jobs.score import run_score

    d, _ = archive
    cfg = tiny_config("custom", classes=CLASSES, visual_length=32)
    rows, _ = make_feature_set(cfg, 3, 0, 32, seed=3)
    write_feature_table(rows + rows[:2], str(tmp_path / "f" / "part-0.parquet"))
    s = run_score(str(d / "model.pt"), str(tmp_path / "o"), features=str(tmp_path / "f"),
                  tracking_uri=f"sqlite:///{tmp_path}/m.db", log=lambda *_: None)
    assert s["videos_scored"] == 3 and s["duplicate_rows_ignored"] == 2
    assert len(pq.read_table(str(tmp_path / "o" / "scores")).to_pylist()) == 3


def test_part_writer_flushes_by_count_and_by_time(tmp_path):
    now = [0.0]
    w = PartWriter(str(tmp_path), ERROR_SCHEMA, rows_per_file=3, run_id="r", flush_seconds=10.0,
                   clock=lambda: now[0])
    row = {"path": "p", "video_id": "v", "stage": "s", "error": "e"}
    w.add([row])
    now[0] = 9.0
    w.tick()
    assert not list(tmp_path.glob("part-*.parquet"))          # not yet: 9 s < 10 s
    now[0] = 10.5
    w.tick()
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1    # the slow row is on disk
    w.add([row, row, row])                                    # by count
    assert len(list(tmp_path.glob("part-*.parquet"))) == 2
    assert pq.read_table(str(tmp_path)).num_rows == 4
    for cmd in ("extract", "score"):
        sub = next(a for a in build_parser()._actions if a.dest == "cmd").choices[cmd]
        opts = {o for act in sub._actions for o in act.option_strings}
        assert {"--rows-per-file", "--flush-seconds"} <= opts


@pytest.mark.slow
def test_one_mlflow_store_for_train_and_score(ray_local, tmp_path, monkeypatch, capsys):
    """`train --register X` then `score --model models:/X@champion` with no tracking option
    meet in the same store, whose artifacts sit beside it (not in ./mlruns).  Training
    the same run again does not register a duplicate version."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("custom", classes=CLASSES)
    rows, _ = make_feature_set(cfg, 6, 6, 32, seed=1)
    write_feature_table(rows, str(tmp_path / "train.parquet"))
    train = ["train", "--train", "train.parquet", "--preset", "custom", "--classes", ",".join(CLASSES),
             "--tiny-clip", "--epochs", "1", "--batch-size", "2", "--visual-length", "32", "--num-workers", "1",
             "--cpus-per-worker", "0.5", "--register", "vad-new", "--run-name", "once"]
    assert main(train) == 0
    first = result_json(capsys.readouterr().out)
    assert first["registered_version"] == 1
    assert first["tracking_uri"] == f"sqlite:///{tmp_path}/runs/mlflow.db"
    t0 = time.time()
    assert main(train) == 0                                    # the finished run again: nothing to train
    out = capsys.readouterr()
    again = result_json(out.out)
    assert again["registered_version"] == 1 and again.get("already_registered")
    assert "already finished with this config: nothing to train" in out.err, out.err[-2000:]
    assert again["best_metrics"] == first["best_metrics"] and time.time() - t0 < 20
    s = _score_cli(capsys, "--model", "models:/vad-new@champion", "--features", "train.parquet", "--out", "o")
    assert s["videos_scored"] == 12 and s["tracking_uri"] == first["tracking_uri"]
    assert not (tmp_path / "mlruns").exists()
    assert list((tmp_path / "runs" / "mlartifacts").rglob("MLmodel"))
    versions = mlflow.tracking.MlflowClient(first["tracking_uri"]).search_model_versions("name = 'vad-new'")
    assert len(versions) == 1


def test_bad_inputs_fail_before_any_worker_with_one_line(ray_local, archive, tmp_path, capsys):
    d, _ = archive
    cfg = tiny_config("custom", classes=CLASSES)
    rows, gt = make_feature_set(cfg, 4, 4, 48, seed=1)           # 48-d features, the tiny CLIP is 32-d
    write_feature_table(rows, str(tmp_path / "wrong.parquet"))
    ok, _ = make_feature_set(cfg, 4, 4, 32, seed=1)
    write_feature_table(ok, str(tmp_path / "ok.parquet"))
    write_gt(gt, str(tmp_path / "gt.csv"))
    import argparse

    import torch

    # a "checkpoint" that would run code when unpickled (a class instance, not tensors)
    torch.save({"format": "vadclip/1", "payload": argparse.Namespace(a=1)}, str(tmp_path / "evil.pt"))
    db = f"sqlite:///{tmp_path}/m.db"
    base = ["--preset", "custom", "--classes", ",".join(CLASSES), "--tiny-clip", "--tracking-uri", db,
            "--storage", str(tmp_path / "runs")]
    cases = [
        (["train", "--train", str(tmp_path / "wrong.parquet"), *base], "dimension 48, the model expects 32"),
        (["train", "--train", str(tmp_path / "ok.parquet"), "--eval", str(tmp_path / "ok.parquet"), *base],
         "needs --gt"),
        (["train", "--train", str(tmp_path / "ok.parquet"), "--preset", "custom", "--tiny-clip"],
         "preset 'custom' needs classes"),
        (["train", "--train", str(tmp_path / "missing.parquet"), *base], "not found"),
        (["score", "--model", str(d / "model.pt"), "--features", str(tmp_path / "wrong.parquet"),
          "--out", str(tmp_path / "o"), "--tracking-uri", db], "dimension 48, the model expects 32"),
        (["score", "--model", str(d / "model.pt"), "--features", str(tmp_path / "ok.parquet"), "--crop", "3",
          "--out", str(tmp_path / "o"), "--tracking-uri", db], "no rows for crop 3; the feature set holds crops [0]"),
        (["score", "--model", "models:/no-such-model@champion", "--features", str(tmp_path / "ok.parquet"),
          "--out", str(tmp_path / "o"), "--tracking-uri", db], "no-such-model"),
        (["score", "--model", str(tmp_path / "missing.pt"), "--features", str(tmp_path / "ok.parquet"),
          "--out", str(tmp_path / "o"), "--tracking-uri", db], "model file not found"),
        (["evaluate", "--model", str(tmp_path / "ok.parquet"), "--features", str(tmp_path / "ok.parquet"),
          "--gt", str(tmp_path / "missing_gt.csv")], "ground truth not found"),
        (["evaluate", "--model", str(tmp_path / "ok.parquet"), "--features", str(tmp_path / "ok.parquet"),
          "--gt", str(tmp_path / "gt.csv")], "not a readable torch checkpoint"),
        (["score", "--model", str(tmp_path / "evil.pt"), "--features", str(tmp_path / "ok.parquet"),
          "--out", str(tmp_path / "o"), "--tracking-uri", db], "refused: the checkpoint carries pickled"),
    ]
    _write_csv(str(tmp_path / "nopath.csv"), ["file", "label"], [["a.mp4", "Normal"]])
    odd = [dict(r, label="Unicorn") if i == 0 else r for i, r in enumerate(ok)]
    write_feature_table(odd, str(tmp_path / "odd.parquet"))
    cases += [
        (["extract", str(tmp_path / "nopath.csv"), "--out", str(tmp_path / "x"), "--tiny-clip"],
         "manifest needs a 'path' column"),
        (["train", "--train", str(tmp_path / "odd.parquet"), *base], "unknown label 'Unicorn'"),
        (["train", "--train", str(tmp_path / "ok.parquet"), "--preset", "ucf", "--classes", "a,b", "--tiny-clip"],
         "use the 'custom' preset"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        one_error_line(capsys.readouterr().err, expected)
    # nothing was started for them: no MLflow run exists in the store
    client = mlflow.tracking.MlflowClient(db)
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_failed_training_marks_its_mlflow_run_failed(faults, tmp_path):
    from vadclip.jobs.train import run_train

    cfg = tiny_config("custom", classes=CLASSES, epochs=2, batch_size=2, visual_length=32)
    rows, _ = make_feature_set(cfg, 4, 4, 32, seed=1)
    write_feature_table(rows, str(tmp_path / "t.parquet"))
    uri = f"sqlite:///{tmp_path}/m.db"
    fired = faults.arm("raise_after_epoch", 1)
    with pytest.raises(Exception):
        run_train(str(tmp_path / "t.parquet"), cfg, str(tmp_path / "runs"), run_name="doomed", num_workers=1,
                  cpus_per_worker=0.5, tracking_uri=uri, max_failures=0, log=lambda *_: None)
    assert os.path.exists(fired)
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("vadclip").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_scoring_with_nothing_flagged_still_plots_the_top_videos(ray_local, archive, tmp_path):
    from vadclip.jobs.score import ScoreOptions, run_score

    d, _ = archive
    cfg = tiny_config("custom", classes=CLASSES, visual_length=32)
    rows, _ = make_feature_set(cfg, 5, 0, 32, seed=3)
    write_feature_table(rows, str(tmp_path / "f.parquet"))
    s = run_score(str(d / "model.pt"), str(tmp_path / "o"), features=str(tmp_path / "f.parquet"),
                  opts=ScoreOptions(threshold=1.0, max_plots=3), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                  log=lambda *_: None)
    assert s["anomalous_videos"] == 0 and s["plots"] == 3
    assert len(list((tmp_path / "o" / "report" / "img").glob("*_timeline.png"))) == 3
    assert "and the 3 highest-scoring unflagged" in (tmp_path / "o" / "report" / "index.html").read_text()


def test_score_videos_takes_the_extraction_options(ray_local, archive, tmp_path, capsys):
    d, paths = archive
    s = _score_cli(capsys, "--model", str(d / "model.pt"), "--videos", str(d / "videos"), "--out",
                   str(tmp_path / "o"), "--crops", "5", "--crop", "2", "--batch-size", "10", "--num-encoders", "1",
                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    feats = pq.read_table(str(tmp_path / "o" / "features"), columns=["video_id", "crop"]).to_pylist()
    assert sorted({f["crop"] for f in feats}) == [0, 1, 2, 3, 4] and len(feats) == 15
    assert s["videos_scored"] == 3


def test_help_shows_each_default_once_and_none_for_required_options(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    for name in sub.choices:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "(default: False)" not in text, name
        assert "default: default" not in text.lower()
        for chunk in text.split(" --")[1:]:     # one option's help: at most one default
            assert chunk.lower().count("default") <= 1, (name, chunk)


def test_tiny_clip_is_built_without_a_missing_weights_warning(caplog):
    from vadclip.clip.backbone import FrozenCLIP
    from vadclip.model.config import ClipSpec

    with caplog.at_level(logging.INFO):
        FrozenCLIP(ClipSpec.tiny())
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "pretrained" in r.getMessage()]
    assert not warned


@pytest.mark.parametrize("args,msg", [
    (["--clip-pretrained", "nosuchtag"], "unknown pretrained tag 'nosuchtag' for ViT-B-16"),
    (["--clip-pretrained", "/nope/weights.bin"], "CLIP weights file not found: /nope/weights.bin"),
    (["--clip-model", "NoSuchModel"], "unknown open_clip model 'NoSuchModel'"),
])
def test_clip_weights_are_checked_once_at_job_start(tmp_path, capsys, args, msg):
    """Model weights that cannot load are one line at job start, before the manifest
    is read or any worker starts (not a failure in every encoder actor)."""
    assert main(["extract", str(tmp_path / "not-even-read"), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not (tmp_path / "o").exists()
