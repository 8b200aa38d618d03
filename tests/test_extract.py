import glob
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from vadclip.config import ClipSpec
from vadclip.extract import ClipImageEncoder, ExtractOptions, extract_video, load_manifest, run_extract
from vadclip.features import read_feature_rows, row_features
from vadclip.video import VideoError, crop_views, iter_snippet_chunks, open_video


def _opts(**kw):
    return ExtractOptions(clip=ClipSpec.tiny(), batch_size=16, **kw)


def test_decode_counts_and_bad_files(sample_videos):
    for rec in sample_videos["good"]:
        info, chunks = iter_snippet_chunks(rec["path"], 16, 224, 1, 4)
        arrs = list(chunks)
        assert sum(a.shape[0] for a in arrs) == -(-info.num_frames // 16)
        assert arrs[0].shape[1:] == (1, 3, 224, 224) and arrs[0].dtype == np.uint8
    d = sample_videos["dir"]
    with pytest.raises(VideoError, match="empty.mp4: empty file"):
        open_video(str(d / "empty.mp4"))
    with pytest.raises(VideoError, match="missing.mp4: file not found"):
        open_video(str(d / "missing.mp4"))
    with pytest.raises(VideoError, match="corrupt.mp4: not a readable video"):
        open_video(str(d / "corrupt.mp4"))


def test_ten_crop_order():
    frame = np.zeros((1, 256, 320, 3), np.uint8)
    frame[0, :, :160] = 255                       # left half white
    views = crop_views(frame, 224, 10)
    assert views.shape == (1, 10, 3, 224, 224)
    mean = views[0].mean(axis=(1, 2, 3))
    # centre straddles; top-left/bottom-left mostly white; right crops mostly black;
    # flipped copies mirror them
    assert mean[1] > mean[0] > mean[2]
    assert mean[3] > mean[4]
    assert mean[6] < mean[7] and np.isclose(mean[6], mean[2]) and np.isclose(mean[7], mean[1])


def test_ray_job_matches_direct_call_resumes_and_records_errors(ray_local, sample_videos, tmp_path):
    out = tmp_path / "feat"
    opts = _opts()
    s1 = run_extract(sample_videos["manifest"], str(out), opts, log=lambda *_: None)
    good, bad = sample_videos["good"], sample_videos["bad"]
    assert s1["videos_ok"] + s1["videos_failed"] == len(good) + len(bad)
    assert s1["videos_failed"] >= 3          # corrupt, empty, missing (truncated may decode partly)
    # the run's pace, from the encode times the rows carry: one encoder, busy part of
    # its span, start-up before its first encode, a steady rate over the span
    assert s1["encoders"] == opts.num_encoders
    assert 0 < s1["encoder_busy_fraction"] <= 1
    assert 0 < s1["startup_s"] < s1["elapsed_s"]
    assert s1["steady_snippets_per_s"] > 0
    rows = read_feature_rows(str(out / "features"))
    errors = pq.read_table(str(out / "errors")).to_pylist()
    # never loses rows: every video is either a feature row or an error row
    assert {r["path"] for r in rows} | {e["path"] for e in errors} == \
        {os.path.abspath(r["path"]) for r in good + bad}
    msgs = {e["video_id"]: e["error"] for e in errors}
    assert "empty file" in msgs["empty"] and "not found" in msgs["missing"] and "corrupt.mp4" in msgs["corrupt"]

    enc = ClipImageEncoder(ClipSpec.tiny())
    by_id = {r["video_id"]: r for r in rows}
    for rec in good:
        r = by_id[rec["video_id"]]
        info, direct = extract_video(rec["path"], enc, opts)
        assert r["num_frames"] == info.num_frames
        assert r["snippet_count"] == -(-info.num_frames // 16)
        assert r["label"] == rec["label"]
        assert abs(r["fps"] - info.fps) < 1e-6
        np.testing.assert_allclose(row_features(r), direct[0], rtol=1e-5, atol=1e-5)

    # resume: nothing is redone, nothing duplicated
    s2 = run_extract(sample_videos["manifest"], str(out), opts, log=lambda *_: None)
    assert s2["videos_ok"] == 0 and s2["videos_skipped"] == len(good) + len(bad)
    assert len(read_feature_rows(str(out / "features"))) == len(rows)

    # a partial earlier run: delete one part file's worth → only the missing videos run
    parts = sorted(glob.glob(str(out / "features" / "part-*.parquet")))
    os.remove(parts[0])
    s3 = run_extract(sample_videos["manifest"], str(out), opts, log=lambda *_: None)
    assert s3["videos_ok"] == len(rows)
    again = read_feature_rows(str(out / "features"))
    assert sorted(r["video_id"] for r in again) == sorted(r["video_id"] for r in rows)


def test_five_crop_rows(ray_local, sample_videos, tmp_path):
    rec = sample_videos["good"][0]
    opts = _opts(crops=5)
    run_extract(rec["path"], str(tmp_path / "f5"), opts, log=lambda *_: None)
    rows = read_feature_rows(str(tmp_path / "f5" / "features"))
    assert sorted(r["crop"] for r in rows) == [0, 1, 2, 3, 4]
    assert len({r["snippet_count"] for r in rows}) == 1


def test_manifest_forms(sample_videos, tmp_path):
    m = load_manifest(sample_videos["manifest"])
    assert len(m) == len(sample_videos["good"]) + len(sample_videos["bad"])
    assert load_manifest(str(sample_videos["dir"]))          # a directory
    assert load_manifest(str(sample_videos["dir"] / "clip00*.mp4"))  # a glob
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_manifest(str(tmp_path / "nothing-here" / "*.mp4"))
