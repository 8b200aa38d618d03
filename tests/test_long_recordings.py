"""Long recordings kept in segments (#46 item 3): a writer commits a recording longer than
``--segment-snippets`` as rows of that many snippets, all committed with its last, and
everything that reads features joins them; scoring a recording a segment at a time gives
what scoring it in one piece gives."""
import json

import numpy as np
import pyarrow as pa
import pytest

from vadclip import VadConfig, build_model
from vadclip.io import parts
from vadclip.io.features import FEATURE_SCHEMA, feature_meta, feature_row, read_feature_rows, row_features
from vadclip.jobs.extract import ExtractOptions, feature_dir
from vadclip.jobs.score import ScoreOptions, run_score
from vadclip.model.checkpoint import save_checkpoint
from vadclip.model.config import ClipSpec
from vadclip.video.samples import make_sample_set, write_manifest

CLASSES = ["Normal", "Explosion", "Fighting"]


def _rows(vid, feats, start=None, **kw):
    return [dict(feature_row(vid, f"/v/{vid}.mp4", "Normal", c, 30.0, 16 * len(feats), feats[:, c],
                             snippet_start=start, **kw)) for c in range(feats.shape[1])]


def test_staged_segments_count_only_with_the_marker_that_commits_them(tmp_path):
    """A segment part without a marker is never read (a reader, a resumed run, a plain
    reader of committed parts); the last part's marker commits them all at once; an
    interrupted recording's segments are removed by the next run."""
    d = str(tmp_path / "features")
    f = np.random.RandomState(0).randn(10, 2, 8).astype(np.float32)
    table = pa.Table.from_pylist
    parts.write_part(d, "part-20261206000000-aaaaaa-w000-s00000.parquet", table(_rows("long", f[:4], 0),
                     schema=FEATURE_SCHEMA), commit=False)
    parts.write_part(d, "part-20261206000000-aaaaaa-w000-s00001.parquet", table(_rows("long", f[4:8], 4),
                     schema=FEATURE_SCHEMA), commit=False)
    parts.write_part(d, "part-20261206000000-aaaaaa-w000-00000.parquet", table(_rows("short", f[:3]),
                                                                                schema=FEATURE_SCHEMA))
    assert [r["video_id"] for r in read_feature_rows(d)] == ["short", "short"]   # the segments are not there yet
    parts.write_part(d, "part-20261206000000-aaaaaa-w000-00001.parquet", table(_rows("long", f[8:], 8),
                     schema=FEATURE_SCHEMA),
                     staged=["part-20261206000000-aaaaaa-w000-s00000.parquet",
                             "part-20261206000000-aaaaaa-w000-s00001.parquet"])
    got = {(r["video_id"], r["crop"]): r for r in read_feature_rows(d)}
    assert sorted(got) == [("long", 0), ("long", 1), ("short", 0), ("short", 1)]
    for c in (0, 1):
        assert got["long", c]["snippet_count"] == 10 and got["long", c]["snippet_start"] is None
        assert np.array_equal(row_features(got["long", c]), f[:, c])
    meta = feature_meta(d)
    assert sorted(zip(meta.column("video_id").to_pylist(), meta.column("segmented").to_pylist())) == \
        [("long", True), ("long", True), ("short", False), ("short", False)]
    assert parts.remove_uncommitted(d) == 0        # committed segments stay
    # a recording whose writer died before its last segment: its segments go with the next run
    parts.write_part(d, "part-20261206000001-bbbbbb-w000-s00000.parquet", table(_rows("cut", f[:4], 0),
                     schema=FEATURE_SCHEMA), commit=False)
    assert parts.remove_uncommitted(d) == 1
    assert len(parts.part_files(d)) == 4


@pytest.fixture(scope="module")
def scorer(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    cfg = VadConfig.from_preset("custom", classes=CLASSES, visual_length=8, visual_layers=1, clip=ClipSpec.tiny())
    save_checkpoint(build_model(cfg), str(d / "model.pt"))
    man, _ = make_sample_set(str(d / "videos"), 2, 2, frames_range=(150, 260), seed=11, prefix="lr")
    write_manifest(man, str(d / "videos.csv"))
    return d, man


@pytest.mark.slow
def test_a_recording_in_segments_reads_and_scores_as_in_one_piece(scorer, tmp_path):
    """The same videos extracted and scored (score --videos) whole and in segments of 5
    snippets (crops 5, chunks of 4 snippets: segments cut across chunks): the joined
    feature rows are the whole rows, the scores and events the same, the summary counts
    each video once; score --features over the segmented set scores as over the whole one."""
    d, man = scorer
    eo = ExtractOptions(clip=ClipSpec.tiny(), batch_size=20, crops=5, precision="fp32")
    opts = ScoreOptions(threshold=0.3)
    s_whole = run_score(str(d / "model.pt"), str(tmp_path / "whole"), videos=str(d / "videos.csv"), extract_opts=eo,
                        opts=opts, log=lambda *_: None)
    from dataclasses import replace

    s_seg = run_score(str(d / "model.pt"), str(tmp_path / "seg"), videos=str(d / "videos.csv"),
                      extract_opts=replace(eo, segment_snippets=5), opts=opts, log=lambda *_: None)
    assert s_whole["videos_scored"] == s_seg["videos_scored"] == len(man)

    whole = {(r["video_id"], r["crop"]): r for r in read_feature_rows(feature_dir(str(tmp_path / "whole")))}
    raw = parts.read_table(feature_dir(str(tmp_path / "seg")), ["video_id", "crop", "snippet_start"]).to_pylist()
    assert max(sum(1 for r in raw if r["video_id"] == v["video_id"] and r["crop"] == 0) for v in man) >= 3
    seg = {(r["video_id"], r["crop"]): r for r in read_feature_rows(feature_dir(str(tmp_path / "seg")))}
    assert sorted(seg) == sorted(whole)
    for k, r in whole.items():
        assert seg[k]["snippet_count"] == r["snippet_count"] and seg[k]["num_frames"] == r["num_frames"]
        assert np.allclose(row_features(seg[k]), row_features(r), atol=1e-5), k

    def scores(out):
        t = parts.read_table(str(out / "scores"), ["video_id", "anomaly", "video_score", "events", "snippet_count"])
        return {r["video_id"]: r for r in t.to_pylist()}

    a, b = scores(tmp_path / "whole"), scores(tmp_path / "seg")
    assert sorted(a) == sorted(b) == sorted(v["video_id"] for v in man)
    for v in a:
        assert b[v]["snippet_count"] == a[v]["snippet_count"] == len(b[v]["anomaly"])
        assert np.allclose(a[v]["anomaly"], b[v]["anomaly"], atol=1e-5)
        assert [(e["start_s"], e["end_s"]) for e in a[v]["events"]] == [(e["start_s"], e["end_s"]) for e in b[v]["events"]]
    assert s_seg["events"] == s_whole["events"] > 0

    # scoring the segmented feature set (score --features) joins each recording first
    s_feat = run_score(str(d / "model.pt"), str(tmp_path / "again"), features=feature_dir(str(tmp_path / "seg")),
                       opts=opts, log=lambda *_: None)
    assert s_feat["videos_scored"] == len(man)
    c = scores(tmp_path / "again")
    for v in a:
        assert np.allclose(a[v]["anomaly"], c[v]["anomaly"], atol=1e-5)
        assert json.dumps([(e["start_s"], e["end_s"]) for e in a[v]["events"]]) == \
            json.dumps([(e["start_s"], e["end_s"]) for e in c[v]["events"]])


def test_the_writers_assemble_step_joins_chunks_in_any_order_and_cuts_long_recordings_in_segments():
    """The writer's assemble step on its own (``writers.Assembler``): chunks in any order and
    a chunk delivered twice give the video once, in snippet order; a recording longer than
    ``segment`` snippets comes out as segments of half as many, then its last part, which
    together are the whole recording; a truncated file's padding snippets never come out."""
    from vadclip.jobs.writers import Assembler, Segment, Whole

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((40, 2, 8)).astype(np.float32)       # 40 snippets, 2 crops
    chunks = [feats[i:i + 4] for i in range(0, 40, 4)]               # 10 chunks of 4

    def row(k, **kw):
        return dict({"chunk": k, "n_chunks": len(chunks), "features": chunks[k], "path": "/v/a.mp4",
                     "times": None}, **kw)

    short = Assembler(segment=1000)
    order = [3, 0, 1, 1, 2, 9, 4, 5, 6, 8, 7]      # out of order, chunk 1 twice
    got = [p for k in order for p in short.add("a", row(k))]
    assert len(got) == 1 and isinstance(got[0], Whole) and got[0].start == 0
    np.testing.assert_array_equal(got[0].feats, feats)
    assert short.incomplete() == []

    long = Assembler(segment=16)       # 40 snippets > 16: segments of 8 while chunks are held
    pieces = [p for k in range(10) for p in long.add("a", row(k))]
    *segs, last = pieces
    assert segs and all(isinstance(s, Segment) and s.feats.shape[0] == 8 for s in segs)
    assert isinstance(last, Whole) and last.start == 8 * len(segs)
    assert [s.start for s in segs] == [8 * i for i in range(len(segs))]
    np.testing.assert_array_equal(np.concatenate([s.feats for s in segs] + [last.feats]), feats)

    cut = Assembler(segment=16)        # a truncated file: only its first 30 snippets decode
    pieces = [p for k in range(10) for p in cut.add("a", row(k, snippets=30))]
    np.testing.assert_array_equal(np.concatenate([p.feats for p in pieces]), feats[:30])

    lost = Assembler(segment=1000)     # a chunk that never comes: the video stays incomplete
    assert [p for k in range(9) for p in lost.add("b", row(k))] == [] and lost.incomplete() == ["b"]
