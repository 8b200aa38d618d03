"""Faults: an encoder actor that dies mid-job, a driver killed with SIGKILL and run
again — every video ends up exactly once, nothing is lost, no half-written part
counts (issue #13)."""
import glob
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from vadclip.model.config import ClipSpec
from vadclip.jobs.extract import ExtractOptions, errors_dir, feature_dir, run_extract


def _ids(directory, column="video_id"):
    files = sorted(glob.glob(os.path.join(directory, "part-*.parquet")))
    return [v for f in files for v in pq.read_table(f, columns=[column]).column(column).to_pylist()]


def test_encoder_actor_killed_mid_job_loses_and_duplicates_nothing(faults, sample_videos, tmp_path):
    victim = sample_videos["good"][3]["video_id"]
    fired = faults.arm("encoder_exit", victim)      # the encoder process that meets it dies (os._exit)
    opts = ExtractOptions(clip=ClipSpec.tiny(), batch_size=32)
    s = run_extract(sample_videos["manifest"], str(tmp_path / "out"), opts, log=lambda *_: None)
    assert os.path.exists(fired)                                 # the actor did die, once
    good = sorted(v["video_id"] for v in sample_videos["good"])
    assert sorted(_ids(feature_dir(str(tmp_path / "out")))) == good
    assert sorted(_ids(errors_dir(str(tmp_path / "out")))) == sorted(b["video_id"] for b in sample_videos["bad"])
    assert s["videos_ok"] == len(good)


def _kill_when(cmd, pattern, timeout=240):
    """Start ``cmd`` in its own process group, SIGKILL the whole group once ``pattern``
    matches a file; returns True if it was killed before it finished."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env={**os.environ, "VADCLIP_PROGRESS_BARS": "0"})
    t0 = time.time()
    while time.time() - t0 < timeout:
        if p.poll() is not None:
            return False
        if glob.glob(pattern):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    raise AssertionError(f"{pattern} never appeared")


def _cli(*args):
    return [sys.executable, "-m", "vadclip.cli", *args]


@pytest.mark.slow
def test_driver_killed_during_extraction_then_rerun(sample_videos, tmp_path):
    from vadclip.video.samples import make_sample_set, write_manifest

    # enough work (16 videos of 300-400 frames, 8 images per encoder pass) that the kill,
    # at the first committed part, lands mid-job; plus the fixture's bad files
    good, _ = make_sample_set(str(tmp_path / "videos"), 8, 8, frames_range=(300, 400), seed=11)
    write_manifest(good + sample_videos["bad"], str(tmp_path / "manifest.csv"))
    out = tmp_path / "out"
    cmd = _cli("extract", str(tmp_path / "manifest.csv"), "--out", str(out), "--tiny-clip", "--flush-seconds", "0",
               "--rows-per-file", "1", "--batch-size", "8")
    assert _kill_when(cmd, str(out / "features" / "part-*.parquet"))
    first = _ids(str(out / "features"))
    assert 0 < len(first) < len(good)                            # really interrupted mid-job
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = _ids(str(out / "features"))
    assert sorted(ids) == sorted(v["video_id"] for v in good)    # none lost, none twice
    assert sorted(_ids(str(out / "errors"))) == sorted(b["video_id"] for b in sample_videos["bad"])


@pytest.mark.slow
def test_driver_killed_during_scoring_then_rerun(tmp_path):
    from vadclip import build_model, tiny_config
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.io.features import write_feature_table
    from vadclip.testing.synthetic import make_feature_set

    cfg = tiny_config("custom", classes=["Normal", "Fire"], visual_length=32)
    save_checkpoint(build_model(cfg), str(tmp_path / "m.pt"))
    # long enough that scoring takes seconds, so the kill lands while rows are being written
    rows, _ = make_feature_set(cfg, 300, 300, 32, t_range=(300, 600), seed=4)
    # as extraction writes them: many parts (each read block is scored and committed by one write task)
    for i in range(0, len(rows), 10):
        write_feature_table(rows[i:i + 10], str(tmp_path / "f" / f"part-{i:05d}.parquet"))
    out = tmp_path / "o"
    cmd = _cli("score", "--model", str(tmp_path / "m.pt"), "--features", str(tmp_path / "f"), "--out", str(out),
               "--flush-seconds", "0", "--rows-per-file", "1", "--max-plots", "0",
               "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert _kill_when(cmd, str(out / "scores" / "part-*.parquet"))
    assert 0 < len(_ids(str(out / "scores"))) < len(rows)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = _ids(str(out / "scores"))
    assert len(ids) == len(set(ids)) == len(rows)
