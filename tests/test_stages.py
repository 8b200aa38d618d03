"""Each Ray Data stage on a hand-built batch, without Ray (the end-to-end tests run
them in pipelines): decode, encode, score."""
import numpy as np

from vadclip import build_model, tiny_config
from vadclip.model.checkpoint import checkpoint_dict, load_model_file
from vadclip.model.config import ClipSpec
from vadclip.jobs.extract import DecodeStage, EncodeStage, ExtractOptions
from vadclip.io.features import feature_row
from vadclip.jobs.score import SCORE_SCHEMA, STAGE_SCHEMA, ScoreOptions, ScoreStage
from vadclip.jobs.stages import Resources, Stage, run_stages

OPTS = ExtractOptions(clip=ClipSpec.tiny(), batch_size=4)


def test_decode_stage_chunks_a_video_and_turns_a_bad_one_into_one_error_row(sample_videos):
    good = sample_videos["good"][0]
    stage = DecodeStage(OPTS, 64)
    stage.setup()
    # the plan hands the manifest's columns on as a map ((key, value) pairs), never JSON text
    rows = list(stage({"video_id": good["video_id"], "path": good["path"], "label": good["label"],
                       "meta": [("camera", "gate"), ("site", "north")]}))
    n_snip = sum(r["frames"].shape[0] for r in rows)
    assert all(r["meta"] == {"camera": "gate", "site": "north"} for r in rows)
    # each chunk's decode span rides beside the data, not as columns of it
    spans = [r["stage_perf"]["decode"] for r in rows]
    assert all(s["end"] >= s["start"] and s["worker"] for s in spans)
    assert all(b["start"] >= a["end"] for a, b in zip(spans, spans[1:]))
    assert rows[0]["frames"].shape[1:] == (1, 3, 64, 64) and rows[0]["frames"].dtype == np.uint8
    assert [r["chunk"] for r in rows] == list(range(rows[0]["n_chunks"]))
    assert n_snip == -(-rows[0]["num_frames"] // 16) and all(r["error"] == "" for r in rows)
    bad = sample_videos["bad"][0]
    (err,) = list(stage({"video_id": "corrupt", "path": bad["path"], "label": None}))
    assert err["chunk"] == -1 and "corrupt.mp4: not a readable video" in err["error"]
    assert err["meta"] == {} and err["stage_perf"]["decode"]["end"] >= err["stage_perf"]["decode"]["start"]


def test_encode_stage_encodes_chunks_and_passes_errors_through():
    stage = EncodeStage(OPTS)
    stage.setup()
    frames = np.random.default_rng(0).integers(0, 255, (3, 1, 3, 224, 224), dtype=np.uint8)
    batch = {"video_id": np.array(["a", "b"]), "path": np.array(["a.mp4", "b.mp4"]),
             "frames": np.array([frames, frames[:0]] + [None], dtype=object)[:-1],
             "error": np.array(["", "b.mp4: empty file (0 bytes)"], dtype=object), "chunk": np.array([0, -1]),
             "stage_perf": np.array([{"decode": {"worker": "h:1", "node": "n", "start": 1.0, "end": 2.0}}] * 2 + [None],
                                    dtype=object)[:-1]}
    out = stage(batch)
    perf = list(out["stage_perf"])
    # the decode span kept, the encode span beside it: what the run summary's pace is made of
    assert all(p["decode"]["end"] == 2.0 and p["encode"]["end"] >= p["encode"]["start"] for p in perf)
    assert {p["encode"]["precision"] for p in perf} == {stage.enc.precision} and perf[0]["encode"]["gpus"] == 0
    assert not {"encoder", "enc_t0", "enc_t1", "precision", "encoder_node"} & set(out)
    assert out["features"][0].shape == (3, 1, 32) and out["features"][0].dtype == np.float32
    assert out["features"][1].shape == (0, 1, 32) and out["error"][1] == "b.mp4: empty file (0 bytes)"
    np.testing.assert_allclose(out["features"][0], stage.enc.encode(frames), atol=1e-6)
    assert list(out["chunk"]) == [0, -1] and "frames" not in out


def test_score_stage_scores_rows_and_records_bad_features():
    cfg = tiny_config("custom", classes=["Normal", "Fire"], visual_length=32)
    scoring_model = load_model_file(checkpoint_dict(build_model(cfg)))   # frozen text features, as run_score has
    stage = ScoreStage(checkpoint_dict(scoring_model), ScoreOptions(threshold=0.0))
    stage.setup()
    rng = np.random.default_rng(0)
    rows = [feature_row("ok", "ok.mp4", None, 0, 25.0, 320, rng.normal(size=(20, 32))),
            feature_row("nan", "nan.mp4", None, 0, 25.0, 32, np.full((2, 32), np.nan))]
    batch = {k: np.array([r[k] for r in rows] + [None], dtype=object)[:-1] for k in rows[0]}
    out = stage(batch)
    # typed Arrow rows, the scores table's own columns (events as structs, no JSON text)
    assert out.schema.equals(STAGE_SCHEMA) and out.schema.field("events").type == SCORE_SCHEMA.field("events").type
    ok, nan = out.to_pylist()
    assert len(ok["anomaly"]) == 20 and len(ok["class_probs"]) == 40 and ok["snippet_count"] == 20
    assert ok["flagged"] and ok["error"] is None and ok["events"]    # threshold 0: every snippet is anomalous
    assert ok["events"][0]["start_frame"] == 0 and ok["model_version"] == ""
    assert nan["error"].startswith("nan.mp4: FeatureError") and nan["anomaly"] is None


def test_each_stage_declares_its_gpu_share():
    cpu, cuda = ExtractOptions(), ExtractOptions(decode_device="cuda", decode_gpus=0.1)
    assert (DecodeStage.gpus(cpu, False), EncodeStage.gpus(cpu, False)) == (0.0, 0.0)
    assert (DecodeStage.gpus(cpu, True), EncodeStage.gpus(cpu, True)) == (0.0, 1.0)
    assert (DecodeStage.gpus(cuda, True), EncodeStage.gpus(cuda, True)) == (0.1, 0.5)   # they share the GPU
    assert (DecodeStage.gpus(cuda, False), EncodeStage.gpus(cuda, False)) == (0.0, 0.0)  # no GPU: CPU decode
    assert EncodeStage.gpus(ExtractOptions(gpus_per_encoder=0.25), True) == 0.25


def test_each_stage_declares_what_a_worker_of_it_reserves():
    opts = ExtractOptions(num_encoders=3)
    assert DecodeStage(opts, 64).resources() == Resources(cpus=1.0)
    assert DecodeStage(opts, 64, 0.1).resources() == Resources(cpus=1.0, gpus=0.1) and \
        DecodeStage(opts, 64, 0.1).device == "cuda"
    assert EncodeStage(opts).resources() == Resources(cpus=1, actors=3, batch_size=1)
    assert EncodeStage(opts, None, 0.5).resources() == Resources(cpus=0, gpus=0.5, actors=3, batch_size=1)
    assert ScoreStage(None, ScoreOptions(num_scorers=2)).resources() == Resources(cpus=1, actors=2, batch_size=8)


def test_run_stages_sets_each_worker_up_once_and_names_ray_operators_after_the_stages(ray_local):
    """Tasks (a row stage) set up in each task; an actor pool (a batch stage) once per
    actor, however many batches it takes; Ray's operators carry the stages' names."""
    import ray

    class _Tagged(Stage):
        """Tags each row with the process that set it up and how often it was (a class
        made here, so that Ray's workers get it by value)."""

        def __init__(self, actors: int, batch_size=None):
            self.actors, self.batch_size, self.setups = actors, batch_size, 0

        def resources(self):
            return Resources(cpus=0.25, actors=self.actors, batch_size=self.batch_size)

        def setup(self):
            import os

            self.setups += 1
            self.pid = os.getpid()

        def __call__(self, rows):
            if self.batch_size is None:
                yield dict(rows, pid=self.pid, setups=self.setups)
                return
            yield dict(rows, pid=np.full(len(rows["id"]), self.pid), setups=np.full(len(rows["id"]), self.setups))

    ds = run_stages(ray.data.range(40, override_num_blocks=8), [_Tagged(0), _Tagged(2, batch_size=4)])
    assert "FlatMap(_Tagged)" in str(ds) and "MapBatches(_Tagged)" in str(ds)
    rows = ds.take_all()
    assert sorted(r["id"] for r in rows) == list(range(40))
    assert {r["setups"] for r in rows} == {1}            # never set up twice in one worker
    assert 1 <= len({r["pid"] for r in rows}) <= 2       # the pool's two actors at most
    # the second stage's columns replaced the first's: every row went through both
    assert all(isinstance(r["pid"], (int, np.integer)) for r in rows)


def test_a_slow_but_progressing_video_outlives_a_stall_deadline_shorter_than_its_decode(tmp_path):
    """The deadline is on stalls, not length (issue #46): a real video whose decoding takes
    T seconds, with a stall deadline of T/3, gets every row; with a total deadline well below T
    (--video-timeout-s, off by default) it becomes an error row naming that deadline."""
    import dataclasses
    import time

    from vadclip.video.samples import write_video

    path = str(tmp_path / "long.mp4")
    write_video(path, 2400, fps=25.0, width=320, height=240)
    item = {"video_id": "long", "path": path, "label": None}
    opts = dataclasses.replace(OPTS, decoder="decord", stall_timeout_s=0, video_timeout_s=0)
    list(DecodeStage(opts, 64)(item))           # warm: the decoder's first open in this process
    t0 = time.monotonic()
    plain = list(DecodeStage(opts, 64)(item))
    took = time.monotonic() - t0
    assert all(r["error"] == "" for r in plain) and sum(len(r["frames"]) for r in plain) == 150
    assert took > 0.3, took                     # the deadlines below are fractions of a real decode

    slow = list(DecodeStage(dataclasses.replace(opts, stall_timeout_s=took / 3), 64)(item))
    assert [r["error"] for r in slow] == [""] * len(plain)
    assert all(np.array_equal(a["frames"], b["frames"]) for a, b in zip(plain, slow))

    # a total deadline far below any decode of it (took > 0.3 s), so it fires whatever the load
    *chunks, err = list(DecodeStage(dataclasses.replace(opts, video_timeout_s=0.05), 64)(item))
    assert len(chunks) < len(plain) and err["chunk"] == -1
    assert "deadline of 0.05 s (--video-timeout-s)" in err["error"]
    assert ExtractOptions().video_timeout_s == 0 and ExtractOptions().stall_timeout_s > 0


def test_a_read_that_stops_moving_is_failed_by_the_stall_deadline():
    """The producer side of the same clock: rows that stop coming (and no progress beat
    from the reading thread) fail after the stall deadline, not before; progress beats
    keep a slow producer alive."""
    import time

    import pytest

    from vadclip.io.progress import beat
    from vadclip.jobs.stages import DeadlineExceeded, within_deadline

    def beating(n, pause):
        for i in range(n):
            for _ in range(4):
                time.sleep(pause / 4)
                beat()                      # bytes read, frames decoded
            yield i

    assert list(within_deadline(beating(3, 0.8), stall_s=0.5)) == [0, 1, 2]     # 0.8 s per row, beats every 0.2 s

    def hangs():
        yield 0
        time.sleep(30)                      # a read blocked in a C library: no beat, no row
        yield 1

    t0 = time.monotonic()
    got = []
    with pytest.raises(DeadlineExceeded, match="no progress for 0.5 s"):
        for r in within_deadline(hangs(), stall_s=0.5):
            got.append(r)
            time.sleep(1.0)                 # the consumer holding it back does not count
    assert got == [0] and 1.4 < time.monotonic() - t0 < 5


def test_no_json_text_crosses_between_the_extraction_stages(ray_local, sample_videos, tmp_path):
    """The extraction pipeline as a job runs it (its real plan, decode tasks and encoder
    pool): what reaches the writers carries the manifest's columns as a struct and each
    stage's timing in one ``stage_perf`` struct beside the data — no column of JSON text
    and no timing column; the stored rows' ``meta`` text is made by the writer alone."""
    import csv

    import pyarrow as pa

    from vadclip.jobs.extract import _datasets, _Plan, check_run, extraction_stages
    from vadclip.jobs.stages import run_stages

    good = sample_videos["good"][0]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["path", "camera", "start_time"], [good["path"], "gate", "2026-11-01T08:00:00Z"]])
    opts = ExtractOptions(clip=ClipSpec.tiny(), batch_size=4, decoder="decord")
    c = check_run(str(manifest), str(tmp_path / "out"), opts, False, lambda *_: None)
    plan = _Plan(c.items, c.todo, c.output, c.prov, c.weights, set(), c.gpus, precision=c.opts.precision)
    (first,) = _datasets(c.todo)     # one window: the runner's dataset of the round, through the job's stages
    ds = run_stages(first, extraction_stages(plan, c.opts, lambda *_: None))
    rows = ds.take_all()
    schema = ds.schema().base_schema
    assert pa.types.is_struct(schema.field("meta").type) and pa.types.is_struct(schema.field("stage_perf").type)
    assert {f.name for f in schema.field("stage_perf").type} == {"decode", "encode"}
    assert not {"encoder", "encoder_node", "enc_t0", "enc_t1", "precision"} & set(schema.names)
    assert rows and all(r["meta"] == {"camera": "gate", "start_time": "2026-11-01T08:00:00+00:00"} for r in rows)
    for r in rows:      # every string a stage hands on is a name, a path or an error, never a JSON document
        assert not any(isinstance(v, str) and v.lstrip().startswith(("{", "[")) for v in r.values())
