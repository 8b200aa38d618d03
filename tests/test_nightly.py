"""The nightly scan as a cron job runs it (issue #44): the same `vadclip score --videos ARCHIVE
--out OUT` again and again, over an archive that grows, with runs that overlap. Real CLI
processes, real videos, one output folder."""
import glob
import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

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
    man, _ = make_sample_set(str(tmp_path / "cams"), 5, 5, frames_range=(600, 800), seed=3, prefix="cam")
    write_manifest(man, str(tmp_path / "cams.csv"))
    out = str(tmp_path / "nightly")
    scan = ["score", "--model", model, "--videos", str(tmp_path / "cams.csv"), "--out", out, "--max-plots", "2"]
    first = _start(scan, tmp_path, "first")
    deadline = time.time() + 180
    while not glob.glob(os.path.join(out, "features", "_leases", "alive-*")):      # it holds both folders
        assert first.poll() is None and time.time() < deadline, (tmp_path / "first.err").read_text()[-3000:]
        time.sleep(0.5)

    rc, _, err = _done(_start(scan, tmp_path, "second"), tmp_path, "second", timeout=300)
    assert rc == 2, err[-3000:]
    one_error_line(err, "a live run (", "writes this output", "--wait")
    rc, _, err = _done(_start(scan + ["--crops", "5"], tmp_path, "refused"), tmp_path, "refused", timeout=300)
    assert rc == 2, err[-3000:]
    assert first.poll() is None                       # neither touched the first run
    waiting = _start(scan + ["--wait", "900"], tmp_path, "waiting")

    rc, out1, err1 = _done(first, tmp_path, "first")
    assert rc == 0, err1[-3000:]
    assert json.loads(out1)["videos_scored"] == len(man) and "LeaseLost" not in err1
    rc, out2, err2 = _done(waiting, tmp_path, "waiting")
    assert rc == 0, err2[-3000:]
    assert "waiting for it" in err2 and json.loads(out2)["videos_scored"] == 0
    ids = sorted(m["video_id"] for m in man)
    assert sorted(pq.read_table(os.path.join(out, "scores"), columns=["video_id"]).column("video_id").to_pylist()) \
        == ids
    feats = pq.read_table(os.path.join(out, "features"), columns=["video_id"]).column("video_id").to_pylist()
    assert sorted(feats) == ids
    assert not glob.glob(os.path.join(out, "*", "_leases", "alive-*"))        # each run let go when it ended
