"""Times from the frames' own timestamps, and frame counts from what decodes (issue #35).

The files are written here with PyAV: a variable-frame-rate video (10 frames/s for its
first two seconds, then 40 frames/s) whose frame ``i`` says which frame it is
(:func:`vadclip.video.samples.frame_number`), the same in MPEG-TS, and a fast-start MP4
cut short.  What the tests expect comes from how the files were written (the times given
to the encoder, the frames FFmpeg decodes from the cut file), never from the code under test."""
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from vadclip.jobs.score import ScoreOptions, find_events
from vadclip.metrics.operating import EventRule, Footage, operating_stats
from vadclip.video.decode import iter_snippet_chunks, open_video, snippet_frame_indices
from vadclip.video.samples import frame_number, write_numbered_video

TIMES = [i * 0.1 for i in range(20)] + [2.0 + i * 0.025 for i in range(40)]    # 60 frames, 3.0 s
N = len(TIMES)
# where the 16-frame snippets start (and the last ends: its last frame lasts 25 ms, as most do)
SNIPPET_TIMES = [TIMES[i] for i in range(0, N, 16)] + [TIMES[-1] + 0.025]


def _decoded_frames(path):
    """How many frames FFmpeg (PyAV) decodes from ``path`` before it stops."""
    import av

    n = 0
    with av.open(path) as c:
        try:
            for _ in c.decode(c.streams.video[0]):
                n += 1
        except av.error.FFmpegError:
            pass
    return n


def _listed_frames(path):
    import av

    with av.open(path) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import av

    d = tmp_path_factory.mktemp("times")
    write_numbered_video(str(d / "vfr.mp4"), N, times=TIMES)
    write_numbered_video(str(d / "vfr.ts"), N, times=TIMES)
    write_numbered_video(str(d / "cfr.mp4"), N, fps=25)
    # a fast-start MP4 (its index first, as cameras and web exports write) cut short
    width, height = 4 * 50 + 4, 48
    with av.open(str(d / "whole.mp4"), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "medium", "bf": "3", "g": "12"}
        for i in range(50):
            img = np.random.default_rng(i).integers(0, 255, (height, width, 3), dtype=np.uint8)   # big frames
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    whole = (d / "whole.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(whole[:len(whole) * 4 // 5])
    os.remove(d / "whole.mp4")
    return d


@pytest.mark.parametrize("name,decoder", [("vfr.mp4", "auto"), ("vfr.mp4", "decord"), ("vfr.mp4", "pyav"),
                                          ("vfr.ts", "auto")])
def test_a_variable_frame_rate_video_gets_its_snippets_times_from_its_timestamps(files, name, decoder):
    info, chunks = iter_snippet_chunks(str(files / name), 16, 32, 1, 2, decoder=decoder)
    n = sum(len(c) for c in chunks)
    assert info.num_frames == N and n == info.snippet_count(16) == 4
    assert info.snippet_times(16) == pytest.approx(SNIPPET_TIMES, abs=1e-3)
    assert info.fps == pytest.approx(N / 3.0, rel=0.011)            # the average over the file
    # the frames are the right ones too
    reader, _ = open_video(str(files / name), decoder=decoder)
    sel = snippet_frame_indices(N, 16).tolist()
    assert [frame_number(f) for f in reader.get(sel)] == sel


def test_a_constant_rate_video_keeps_its_times_from_the_rate(files):
    info, chunks = iter_snippet_chunks(str(files / "cfr.mp4"), 16, 32, 1, 2)
    list(chunks)
    assert info.fps == pytest.approx(25.0) and info.snippet_times(16) is None


@pytest.mark.parametrize("decoder", ["auto", "decord", "pyav"])
def test_a_truncated_file_counts_the_frames_that_decode(files, decoder):
    path = str(files / "cut.mp4")
    decodes, listed = _decoded_frames(path), _listed_frames(path)
    assert 0 < decodes < listed < 50                                 # the file is what the test needs
    info, chunks = iter_snippet_chunks(path, 16, 32, 1, 2, decoder=decoder)
    list(chunks)
    assert (info.num_frames, info.frames_listed) == (decodes, listed)
    assert info.fps == pytest.approx(25.0, rel=0.01)                # not stretched over the missing frames
    assert info.decoder == "pyav"                                    # the one that decodes in order to the end


def test_events_are_placed_by_the_snippets_times():
    """Hand-made scores: snippets 2-3 of a video whose first two snippets last 1.6 s and
    0.7 s.  The event starts at 2.3 s (the rate alone would say 1.6 s)."""
    a = np.array([0.1, 0.1, 0.9, 0.9], np.float32)
    p = np.tile([[0.2, 0.8]], (4, 1))
    rule = EventRule(threshold=0.5, merge_gap_s=0.0)
    (ev,) = find_events(a, p, ["N", "A"], 20.0, 60, rule, 16, np.array(SNIPPET_TIMES))
    assert (ev["start_s"], ev["end_s"]) == pytest.approx((2.3, 3.0))
    assert (ev["start_frame"], ev["end_frame"]) == (32, 60)
    (ev,) = find_events(a, p, ["N", "A"], 20.0, 60, rule, 16)            # no times: from the rate
    assert (ev["start_s"], ev["end_s"]) == pytest.approx((1.6, 3.0))
    # durations and gaps in seconds from the times (snippet 0 lasts 1.6 s, snippet 2 0.4 s),
    # where the rate alone gives every snippet 0.8 s
    short = EventRule(threshold=0.5, min_duration_s=1.0)
    assert short.events([0.9, 0.1, 0.9, 0.1], 0.8, SNIPPET_TIMES) == [(0, 1)]
    assert short.events([0.9, 0.1, 0.9, 0.1], 0.8) == []
    gap = EventRule(threshold=0.5, merge_gap_s=0.5)
    assert gap.events([0.1, 0.9, 0.1, 0.9], 0.8, SNIPPET_TIMES) == [(1, 4)]
    assert gap.events([0.1, 0.9, 0.1, 0.9], 0.8) == [(1, 2), (3, 4)]
    # false alarms per hour over the footage's real length
    f = Footage(np.array([0.9, 0.1, 0.1, 0.1]), 0.8, True, times=np.array(SNIPPET_TIMES))
    assert operating_stats([f], rule)["normal_hours"] == pytest.approx(3.0 / 3600)


@pytest.mark.slow
def test_extract_and_score_carry_the_times_and_the_truncation(ray_local, files, tmp_path):
    """The job's path: a folder with the VFR video, a constant-rate one and the cut one.
    The feature rows hold the VFR video's snippet times and the cut file's frames that
    decode (its padding snippets trimmed, no error row); scoring places an event of the
    VFR video where its frames are."""
    from vadclip import tiny_config
    from vadclip.io.features import read_feature_rows
    from vadclip.jobs.extract import ExtractOptions, run_extract
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.config import ClipSpec
    from vadclip.model.network import build_model
    from vadclip.jobs.score import run_score

    src = tmp_path / "videos"
    src.mkdir()
    for n in ("vfr.mp4", "cfr.mp4", "cut.mp4"):
        os.symlink(files / n, src / n)
    s = run_extract(str(src), str(tmp_path / "ext"), ExtractOptions(clip=ClipSpec.tiny(), batch_size=4),
                    log=lambda *_: None)
    assert (s["videos_ok"], s["videos_failed"]) == (3, 0)
    rows = {os.path.basename(r["path"]): r for r in read_feature_rows(str(tmp_path / "ext" / "features"))}
    assert rows["vfr.mp4"]["snippet_times"] == pytest.approx(SNIPPET_TIMES, abs=1e-3)
    assert rows["cfr.mp4"]["snippet_times"] is None and rows["cfr.mp4"]["frames_listed"] is None
    decodes, listed = _decoded_frames(str(files / "cut.mp4")), _listed_frames(str(files / "cut.mp4"))
    cut = rows["cut.mp4"]
    assert (cut["num_frames"], cut["frames_listed"]) == (decodes, listed)
    assert cut["snippet_count"] == -(-decodes // 16) and cut["fps"] == pytest.approx(25.0, rel=0.01)

    import torch

    torch.manual_seed(0)
    cfg = tiny_config("custom", classes=["Normal", "Fire"], visual_length=32, visual_layers=1)
    save_checkpoint(build_model(cfg), str(tmp_path / "m.pt"))
    feats = str(tmp_path / "ext" / "features")
    run_score(str(tmp_path / "m.pt"), str(tmp_path / "s0"), features=feats,
              opts=ScoreOptions(threshold=0.0, max_plots=0), log=lambda *_: None)
    got = {os.path.basename(r["path"]): r for r in pq.read_table(str(tmp_path / "s0" / "scores")).to_pylist()}
    assert got["vfr.mp4"]["snippet_times"] == pytest.approx(SNIPPET_TIMES, abs=1e-3)
    a = np.asarray(got["vfr.mp4"]["anomaly"], np.float64)
    # a threshold between the lowest and highest snippet score: some event begins or ends
    # inside the video, where its time is that of the frame there (not frame / average rate)
    thr = float(np.median(a)) if len(set(a.tolist())) > 2 else float(a.min())
    above = np.r_[False, a > thr, False].astype(int)
    starts, ends = np.flatnonzero(np.diff(above) == 1), np.flatnonzero(np.diff(above) == -1)
    want = [(SNIPPET_TIMES[b], SNIPPET_TIMES[e]) for b, e in zip(starts, ends)]
    assert any(0 < b for b in starts) or any(e < len(a) for e in ends)
    run_score(str(tmp_path / "m.pt"), str(tmp_path / "s1"), features=feats,
              opts=ScoreOptions(threshold=thr, merge_gap_s=0.0, max_plots=0), log=lambda *_: None)
    got = {os.path.basename(r["path"]): r for r in pq.read_table(str(tmp_path / "s1" / "scores")).to_pylist()}
    flat = lambda pairs: [t for p in pairs for t in p]          # noqa: E731
    assert want and flat((e["start_s"], e["end_s"]) for e in got["vfr.mp4"]["events"]) == \
        pytest.approx(flat(want), abs=1e-3)
    from vadclip.jobs.score import read_events

    events = read_events(str(tmp_path / "s1")).to_pylist()
    assert flat((e["start_s"], e["end_s"]) for e in events if e["path"].endswith("vfr.mp4")) == \
        pytest.approx(flat(want), abs=1e-3)

    # scoring the raw files (score --videos: extraction inside the scoring job, its writer
    # scoring each video as it is assembled) carries the same times and frame counts
    s = run_score(str(tmp_path / "m.pt"), str(tmp_path / "s2"), videos=str(src),
                  opts=ScoreOptions(threshold=thr, merge_gap_s=0.0, max_plots=0), log=lambda *_: None)
    assert s["videos_failed"] == 0
    got = {os.path.basename(r["path"]): r for r in pq.read_table(str(tmp_path / "s2" / "scores")).to_pylist()}
    assert sorted(got) == ["cfr.mp4", "cut.mp4", "vfr.mp4"]
    v = got["vfr.mp4"]
    assert v["snippet_times"] == pytest.approx(SNIPPET_TIMES, abs=1e-3) and got["cfr.mp4"]["snippet_times"] is None
    assert got["cut.mp4"]["num_frames"] == decodes and len(got["cut.mp4"]["anomaly"]) == -(-decodes // 16)
    a = np.asarray(v["anomaly"], np.float64)
    above = np.r_[False, a > thr, False].astype(int)
    mine = [(SNIPPET_TIMES[b], SNIPPET_TIMES[e]) for b, e in zip(np.flatnonzero(np.diff(above) == 1),
                                                               np.flatnonzero(np.diff(above) == -1))]
    assert flat((e["start_s"], e["end_s"]) for e in v["events"]) == pytest.approx(flat(mine), abs=1e-3)


def test_a_folder_written_before_the_times_columns_scores_with_new_parts(ray_local, tmp_path):
    """A feature folder resumed across the upgrade: one part without the new columns (as
    written before them), one with a VFR video's snippet times; ``score --features`` reads
    both (Ray Data) and each video keeps what its part held."""
    from vadclip import tiny_config
    from vadclip.io.features import write_feature_table
    from vadclip.jobs.score import run_score
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.network import build_model
    from vadclip.testing.synthetic import make_feature_set

    cfg = tiny_config("custom", classes=["Normal", "Fire"], visual_length=32, visual_layers=1)
    rows, _ = make_feature_set(cfg, 2, 2, 32, seed=4)
    (tmp_path / "feats").mkdir()
    old = str(tmp_path / "feats" / "part-a.parquet")
    write_feature_table(rows[:2], old)
    pq.write_table(pq.read_table(old).drop(["snippet_times", "frames_listed", "decoder", "meta"]), old)
    new = [dict(r) for r in rows[2:]]
    times = np.linspace(0.0, 10.0, int(new[0]["snippet_count"]) + 1).tolist()
    new[0]["snippet_times"] = times
    write_feature_table(new, str(tmp_path / "feats" / "part-b.parquet"))
    save_checkpoint(build_model(cfg), str(tmp_path / "m.pt"))
    s = run_score(str(tmp_path / "m.pt"), str(tmp_path / "out"), features=str(tmp_path / "feats"),
                  opts=ScoreOptions(threshold=0.0, max_plots=0), log=lambda *_: None)
    assert (s["videos_scored"], s["videos_failed"]) == (4, 0)
    got = {r["video_id"]: r for r in pq.read_table(str(tmp_path / "out" / "scores")).to_pylist()}
    assert got[new[0]["video_id"]]["snippet_times"] == pytest.approx(times)
    assert [got[r["video_id"]]["snippet_times"] for r in rows[:2] + new[1:]] == [None, None, None]
    # threshold 0: one event over the whole video, ending at its last snippet time (10 s)
    assert got[new[0]["video_id"]]["events"][-1]["end_s"] == pytest.approx(10.0)
