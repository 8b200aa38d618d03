"""The nightly scan as a cron job runs it (issue #44): the same `vadclip score --videos ARCHIVE
--out OUT` again and again, over an archive that grows, with runs that overlap. Real CLI
processes, real videos, one output folder."""
import glob
import json
import os
import subprocess
import sys
import time

import pytest
import table_history

from cli_output import one_error_line

VADCLIP = [sys.executable, "-m", "vadclip.cli"]


def _model(tmp_path):
    from vadclip import build_model
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.config import ClipSpec, VadConfig

    cfg = VadConfig.from_preset("custom", classes=["Normal", "Explosion", "Fighting", "RoadAccidents"],
                                visual_length=32, visual_layers=1, clip=ClipSpec.tiny())
    path = str(tmp_path / "model.pt")
    save_checkpoint(build_model(cfg), path)
    return path


def _start(args, tmp_path, name):
    out = open(tmp_path / f"{name}.out", "w")
    err = open(tmp_path / f"{name}.err", "w")
    env = dict(os.environ, VADCLIP_PROGRESS_BARS="0")
    return subprocess.Popen([*VADCLIP, *args], stdout=out, stderr=err, env=env, cwd=tmp_path)


def _done(p, tmp_path, name, timeout=600):
    rc = p.wait(timeout=timeout)
    return rc, (tmp_path / f"{name}.out").read_text(), (tmp_path / f"{name}.err").read_text()


@pytest.mark.slow
def test_overlapping_scans_of_one_archive_never_kill_each_other(tmp_path):
    """A second scan started while the first runs stops in one line naming it (exit 2); one with a
    flag the folder refuses stops too; one given --wait waits for the first, then finds nothing
    left. The first is never fenced: exit 0, and the folder holds every video exactly once."""
    from vadclip.video.samples import make_sample_set, write_manifest

    model = _model(tmp_path)
    man, _ = make_sample_set(str(tmp_path / "cams"), 12, 12, frames_range=(900, 1100), seed=3, prefix="cam")
    write_manifest(man, str(tmp_path / "cams.csv"))
    out = str(tmp_path / "nightly")
    scan = ["score", "--model", model, "--videos", str(tmp_path / "cams.csv"), "--out", out, "--max-plots", "2"]
    first = _start(scan, tmp_path, "first")
    deadline = time.time() + 180
    while not glob.glob(os.path.join(out, "features", "_leases", "alive-*")):      # it holds both folders
        assert first.poll() is None and time.time() < deadline, (tmp_path / "first.err").read_text()[-3000:]
        time.sleep(0.5)

    second, refused = _start(scan, tmp_path, "second"), _start(scan + ["--crops", "5"], tmp_path, "refused")
    waiting = _start(scan + ["--wait", "900"], tmp_path, "waiting")
    rc, _, err = _done(second, tmp_path, "second", timeout=300)
    assert rc == 2, err[-3000:]
    one_error_line(err, "a live run (", "writes this output", "--wait")
    rc, _, err = _done(refused, tmp_path, "refused", timeout=300)
    assert rc == 2, err[-3000:]
    assert first.poll() is None, "the archive is too small: the first scan ended before the others looked"

    rc, out1, err1 = _done(first, tmp_path, "first")
    assert rc == 0, err1[-3000:]
    assert json.loads(out1)["videos_scored"] == len(man) and "LeaseLost" not in err1
    rc, out2, err2 = _done(waiting, tmp_path, "waiting")
    assert rc == 0, err2[-3000:]
    assert "waiting for it" in err2 and json.loads(out2)["videos_scored"] == 0
    ids = sorted(m["video_id"] for m in man)
    assert sorted(table_history.read(os.path.join(out, "scores"), ["video_id"]).column("video_id").to_pylist()) \
        == ids
    feats = table_history.read(os.path.join(out, "features"), ["video_id"]).column("video_id").to_pylist()
    assert sorted(feats) == ids
    assert not glob.glob(os.path.join(out, "*", "_leases", "alive-*"))        # each run let go when it ended


def _run(args, tmp_path, timeout=900):
    env = dict(os.environ, VADCLIP_PROGRESS_BARS="0")
    r = subprocess.run([*VADCLIP, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    assert r.returncode == 0, f"vadclip {' '.join(args[:1])}: rc {r.returncode}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout)


def _manifest(rows, path):
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "video_id", "camera"])
        w.writeheader()
        w.writerows(rows)


def _table(out, name, columns=None):
    return table_history.read(os.path.join(out, name), columns).to_pylist()


@pytest.mark.slow
def test_the_same_scan_night_after_night_through_a_promotion_and_a_recalibration(tmp_path):
    """The cron job's command, unchanged, four nights running over a growing camera archive with a
    real MLflow store: night 2 rewrites a recording and adds two; a new version is promoted to
    @champion and calibrated, and a camera is corrected in the manifest, before night 3 adds two
    more; night 4 asks --rescore changed. Every night exits 0, every video has exactly one score
    row and its events once, and the rows say which version scored them."""
    from vadclip import build_model
    from vadclip.io.gt import write_gt
    from vadclip.jobs.score import read_events
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.config import tiny_config
    from vadclip.video.samples import make_sample_set, write_manifest, write_video

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    classes = ["Normal", "Explosion", "Fighting", "RoadAccidents"]
    for v, seed in ((1, 0), (2, 7)):
        cfg = tiny_config("custom", classes=classes, visual_length=32, seed=seed)
        save_checkpoint(build_model(cfg), str(tmp_path / f"v{v}.pt"))
    _run(["register-model", str(tmp_path / "v1.pt"), "--name", "cams", "--tracking-uri", uri], tmp_path)
    out, man_path, cams = str(tmp_path / "nightly"), str(tmp_path / "cams.csv"), tmp_path / "cams"
    scan = ["score", "--model", "models:/cams@champion", "--videos", man_path, "--out", out, "--tracking-uri", uri,
            "--max-plots", "2"]
    rows = []

    def night(prefix, n, seed):
        new, _ = make_sample_set(str(cams), n // 2, n - n // 2, frames_range=(60, 120), seed=seed, prefix=prefix)
        rows.extend({"path": m["path"], "video_id": m["video_id"], "camera": f"cam{len(rows) % 2}"} for m in new)

    def check(expect_versions):
        scores = _table(out, "scores", ["video_id", "model_version", "events", "num_frames", "meta"])
        assert sorted(r["video_id"] for r in scores) == sorted(r["video_id"] for r in rows)     # each once
        assert {r["video_id"]: r["model_version"] for r in scores} == expect_versions
        events = read_events(out).to_pylist()
        assert sorted((e["video_id"], e["event"]) for e in events) == \
            sorted((r["video_id"], i) for r in scores for i in range(len(r["events"] or [])))
        assert all(e["model"] == expect_versions[e["video_id"]] for e in events)
        return {r["video_id"]: r for r in scores}

    night("n1", 4, 1)
    _manifest(rows, man_path)
    s1 = _run(scan, tmp_path)
    assert s1["videos_scored"] == 4
    check({r["video_id"]: "models:/cams/1" for r in rows})

    # night 2: the NVR rewrote one recording at its path (longer now); two new ones
    rewritten = rows[0]
    write_video(rewritten["path"], 200, fps=25.0, seed=99)
    night("n2", 2, 2)
    _manifest(rows, man_path)
    since = {t: table_history.version(os.path.join(out, t)) for t in ("features", "scores")}
    s2 = _run(scan, tmp_path)
    assert s2["videos_scored"] == 3 and s2["extract"]["videos_ok"] == 3
    by_id = check({r["video_id"]: "models:/cams/1" for r in rows})
    assert by_id[rewritten["video_id"]]["num_frames"] == 200
    # at every commit of the night, a reader saw each recording of night 1 once: the rewritten
    # one's old features and score row went in the commits that added its new ones
    for t, v in since.items():
        history = table_history.rows_per_path(os.path.join(out, t), v)
        assert all(h.get(r["path"]) == 1 for h in history for r in rows[:4]), (t, history)

    # between nights: version 2 promoted, then calibrated (its operating point on the version); a
    # camera corrected in the manifest
    _run(["register-model", str(tmp_path / "v2.pt"), "--name", "cams", "--tracking-uri", uri], tmp_path)
    val, val_gt = make_sample_set(str(tmp_path / "val"), 3, 3, frames_range=(60, 120), seed=5, prefix="val")
    write_manifest(val, str(tmp_path / "val.csv"))
    write_gt(val_gt, str(tmp_path / "val_gt.parquet"))
    _run(["score", "--model", "models:/cams/2", "--videos", str(tmp_path / "val.csv"), "--out",
          str(tmp_path / "val"), "--max-plots", "0", "--tracking-uri", uri], tmp_path)
    cal = _run(["calibrate", "--model", "models:/cams@champion", "--features", str(tmp_path / "val" / "features"),
                "--gt", str(tmp_path / "val_gt.parquet"), "--target-fa-per-hour", "0", "--tracking-uri", uri],
               tmp_path)
    moved = rows[1]
    moved["camera"] = "cam9"
    night("n3", 2, 3)
    _manifest(rows, man_path)
    s3 = _run(scan, tmp_path)
    assert s3["videos_scored"] == 2 and s3["extract"]["videos_ok"] == 2      # the corrected one not decoded
    assert s3["model_version_uri"] == "models:/cams/2" and s3["threshold"] == cal["threshold"]
    new3 = {r["video_id"] for r in rows[-2:]}
    by_id = check({r["video_id"]: "models:/cams/2" if r["video_id"] in new3 else "models:/cams/1" for r in rows})
    assert json.loads(by_id[moved["video_id"]]["meta"])["camera"] == "cam9"
    feats = _table(out, "features", ["video_id", "meta"])
    assert {json.loads(f["meta"])["camera"] for f in feats if f["video_id"] == moved["video_id"]} == {"cam9"}
    assert {e["camera"] for e in read_events(out).to_pylist() if e["video_id"] == moved["video_id"]} <= {"cam9"}

    # night 4: the backlog scored again with the champion, one video at a time into the same folder
    assert s3["scored_by"] == {"models:/cams/1": len(rows) - 2, "models:/cams/2": 2}
    page = open(os.path.join(out, "report", "index.html")).read()
    assert f"models:/cams/1: {len(rows) - 2} videos; models:/cams/2: 2 videos" in page

    v3 = table_history.version(os.path.join(out, "scores"))
    s4 = _run(scan + ["--rescore", "changed"], tmp_path)
    assert s4["videos_rescored"] == len(rows) - 2 and s4["extract"]["videos_ok"] == 0
    # rescored one video at a time: never two score rows for a video, never none
    history = table_history.rows_per_path(os.path.join(out, "scores"), v3)
    assert len(history) > 2 and all(h == {r["path"]: 1 for r in rows} for h in history)
    check({r["video_id"]: "models:/cams/2" for r in rows})
    assert s4["scored_by"] == {"models:/cams/2": len(rows)}

    # night 5: nothing new. The scan changes nothing: no commit, no lease, the report and the
    # tracking server as they were; only its summary says it ran
    import mlflow

    def untouched():
        return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "**"), recursive=True)
                if os.path.isfile(p) and not p.endswith("score_summary.json")}

    def runs():
        return len(mlflow.MlflowClient(uri).search_runs([e.experiment_id for e in
                                                          mlflow.MlflowClient(uri).search_experiments()]))

    before, runs_before = untouched(), runs()
    s5 = _run(scan, tmp_path)
    assert s5["nothing_new"] and s5["videos_scored"] == 0 and s5["videos_skipped"] == len(rows)
    assert s5["videos_total_in_output"] == len(rows) and s5["scored_by"] == s4["scored_by"]
    assert untouched() == before
    assert runs() == runs_before > 0


@pytest.mark.slow
def test_a_scan_killed_mid_write_shows_plain_readers_whole_videos_and_scores_with_their_events(tmp_path):
    """Issue #43: `vadclip score --videos` with ten crops and parts of four rows, the whole
    process group SIGKILLed (as a preempted head) once a scores part is committed. Polars, which
    knows nothing of vadclip, reads the Delta tables as they are: every video has all ten crop
    rows or none, every scored video once, with its events in its row; the same command run
    again leaves every video exactly once, and the events Polars flattens are vadclip's own."""
    import signal
    from collections import Counter

    import polars as pl

    from vadclip.jobs.score import read_events
    from vadclip.video.samples import make_sample_set

    make_sample_set(str(tmp_path / "cams"), 5, 5, frames_range=(60, 90), seed=4, prefix="k")
    out = tmp_path / "out"
    scan = [*VADCLIP, "score", "--model", _model(tmp_path), "--videos", str(tmp_path / "cams"), "--out", str(out),
            "--crops", "10", "--rows-per-file", "4", "--flush-seconds", "0", "--threshold", "0.05",
            "--max-plots", "0", "--decoder", "decord"]
    p = subprocess.Popen(scan, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                         env=dict(os.environ, VADCLIP_PROGRESS_BARS="0"), cwd=tmp_path)
    t0, killed = time.time(), False
    while time.time() - t0 < 600 and p.poll() is None:
        logs = glob.glob(str(out / "scores" / "_delta_log" / "*.json"))
        if any('"add"' in open(f).read() for f in logs):
            os.killpg(p.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    _, err = p.communicate()
    assert killed, f"the scan finished or never committed a score row: {err.decode()[-2000:]}"

    def read(table):
        return pl.read_delta(str(out / table))

    from vadclip.io.features import FEATURE_SCHEMA
    from vadclip.jobs.score import SCORE_SCHEMA

    # each table's own columns, no other's
    assert read("features").columns == FEATURE_SCHEMA.names and read("scores").columns == SCORE_SCHEMA.names
    crops = Counter(read("features")["video_id"].to_list())
    assert crops and set(crops.values()) == {10}, crops                     # whole videos, before any re-run
    scores = read("scores")
    assert 0 < scores.height < 10 and scores["video_id"].is_unique().all()  # really cut short
    assert set(scores["video_id"]) <= set(crops)                           # a score only for whole features
    assert all(bool(ev) == flagged and ev for ev, flagged in zip(scores["events"].to_list(),
                                                                  scores["flagged"].to_list()))

    r = subprocess.run(scan, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                       env=dict(os.environ, VADCLIP_PROGRESS_BARS="0"))
    assert r.returncode == 0, r.stderr[-3000:]
    names = {f[:-4] for f in os.listdir(tmp_path / "cams") if f.endswith(".mp4")}
    feats = read("features")
    assert Counter(feats["video_id"].to_list()) == {v: 10 for v in names}
    assert feats.select("video_id", "crop").is_unique().all()
    scores = read("scores")
    assert sorted(scores["video_id"].to_list()) == sorted(names)
    # the events a plain reader flattens from the score rows are read_events' rows
    flat = (scores.select("video_id", "events")
            .with_columns(pl.int_ranges(pl.col("events").list.len()).alias("event"))
            .explode("events", "event").unnest("events"))
    mine = read_events(str(out))
    assert flat.height == mine.num_rows > 0
    assert sorted(zip(flat["video_id"], flat["event"], flat["start_frame"], flat["end_frame"])) == \
        sorted(zip(*(mine.column(c).to_pylist() for c in ("video_id", "event", "start_frame", "end_frame"))))
