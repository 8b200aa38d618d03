import glob
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import table_history

from vadclip.model.config import ClipSpec
from vadclip.testing.direct import extract_video
from vadclip.clip.encoder import ClipImageEncoder, cpu_bf16_flags
from vadclip.jobs.extract import ExtractOptions, run_extract
from vadclip.jobs.manifest import load_manifest
from vadclip.io.features import read_feature_rows, row_features
from vadclip.video.decode import (DecoderUnavailable, VideoError, check_decoder, crop_views, iter_snippet_chunks,
                           open_video, resolve_decoder, torchcodec_missing)


def _opts(**kw):
    """fp32: these tests compare the job's features with a direct call's (auto times the
    tiny CLIP's precisions, which are too close to call the same way twice)."""
    return ExtractOptions(clip=ClipSpec.tiny(), batch_size=16, **{"precision": "fp32", **kw})


@pytest.mark.parametrize("decoder", ["decord", "torchcodec"])
def test_decode_counts_and_bad_files(sample_videos, decoder, request):
    if decoder == "torchcodec":
        request.getfixturevalue("torchcodec_ok")
    for rec in sample_videos["good"]:
        info, chunks = iter_snippet_chunks(rec["path"], 16, 224, 1, 4, decoder=decoder)
        arrs = list(chunks)
        assert info.decoder == ("decord" if decoder == "decord" else "torchcodec-cpu")
        assert sum(a.shape[0] for a in arrs) == -(-info.num_frames // 16)
        assert arrs[0].shape[1:] == (1, 3, 224, 224) and arrs[0].dtype == np.uint8
    d = sample_videos["dir"]
    with pytest.raises(VideoError, match="empty.mp4: empty file"):
        open_video(str(d / "empty.mp4"), decoder=decoder)
    with pytest.raises(VideoError, match="missing.mp4: file not found"):
        open_video(str(d / "missing.mp4"), decoder=decoder)
    with pytest.raises(VideoError, match=r"corrupt.mp4: not a readable video \((?!\w+, \S+\.cpp)"):
        open_video(str(d / "corrupt.mp4"), decoder=decoder)
    # a truncated file: unreadable, or readable up to where it was cut — never a crash
    try:
        info, chunks = iter_snippet_chunks(str(d / "truncated.mp4"), 16, 64, 1, 4, decoder=decoder)
        assert sum(len(c) for c in chunks) == -(-info.num_frames // 16)
    except VideoError as e:
        assert str(e).startswith(str(d / "truncated.mp4") + ": ")


def test_decoders_give_the_same_frames(sample_videos, torchcodec_ok):
    """torchcodec and decord select the same frames and give the same pixels (the
    middle frame of each snippet, short last snippets included), at every size."""
    for rec in sample_videos["good"]:
        for crops in (1, 10):
            ia, a = iter_snippet_chunks(rec["path"], 16, 64, crops, 3, decoder="decord")
            ib, b = iter_snippet_chunks(rec["path"], 16, 64, crops, 3, decoder="torchcodec")
            a, b = np.concatenate(list(a)), np.concatenate(list(b))
            assert (ia.num_frames, ia.width, ia.height) == (ib.num_frames, ib.width, ib.height)
            assert abs(ia.fps - ib.fps) < 1e-6
            assert a.shape == b.shape and np.array_equal(a, b), rec["path"]
    assert resolve_decoder("auto", "cpu") == ("torchcodec", "cpu")


def test_auto_takes_torchcodec_exactly_where_it_decodes(sample_videos, expected_decoder):
    """The probe agrees with a real decode of a real file by torchcodec itself; where
    torchcodec cannot decode, auto takes decord and a request by name is the
    environment's error, never a video's."""
    real = expected_decoder == "torchcodec-cpu"
    assert (torchcodec_missing() is None) == real
    assert resolve_decoder("auto", "cpu") == (("torchcodec", "cpu") if real else ("decord", "cpu"))
    info, _ = iter_snippet_chunks(sample_videos["good"][0]["path"], 16, 64, 1, 4, decoder="auto")
    assert info.decoder == expected_decoder
    if not real:
        with pytest.raises(DecoderUnavailable, match="torchcodec cannot decode here"):
            resolve_decoder("torchcodec", "cpu")
        with pytest.raises(DecoderUnavailable):   # not a VideoError: no video is marked failed
            open_video(sample_videos["good"][0]["path"], decoder="torchcodec")


def test_decoder_choices_and_the_cuda_fallback(sample_videos, expected_decoder):
    with pytest.raises(ValueError, match="decoding on cuda needs the torchcodec decoder"):
        check_decoder("decord", "cuda")
    with pytest.raises(ValueError, match="decoder must be one of"):
        check_decoder("ffmpeg", "cpu")
    with pytest.raises(ValueError, match="decode device must be one of"):
        check_decoder("auto", "gpu")
    import torch

    rec = sample_videos["good"][0]
    info, chunks = iter_snippet_chunks(rec["path"], 16, 64, 1, 4, decoder="auto", device="cuda")
    got = np.concatenate(list(chunks))
    if torch.cuda.is_available() and expected_decoder != "decord":
        assert info.decoder in ("torchcodec-cuda", "torchcodec-cpu")
    else:   # no CUDA device here: the CPU decodes, the same frames as a CPU request
        assert info.decoder == expected_decoder
        _, ref = iter_snippet_chunks(rec["path"], 16, 64, 1, 4, decoder="decord")
        assert np.array_equal(got, np.concatenate(list(ref)))


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


def test_ray_job_matches_direct_call_resumes_and_records_errors(ray_local, sample_videos, tmp_path,
                                                                expected_decoder):
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
    assert s1["decoders"] == [expected_decoder]
    assert s1["precisions"] == ["fp32"]
    rows = read_feature_rows(str(out / "features"))
    errors = pq.read_table(str(out / "errors")).to_pylist()
    # never loses rows: every video is either a feature row or an error row
    assert {r["path"] for r in rows} | {e["path"] for e in errors} == \
        {os.path.abspath(r["path"]) for r in good + bad}
    msgs = {e["video_id"]: e["error"] for e in errors}
    assert "empty file" in msgs["empty"] and "not found" in msgs["missing"] and "corrupt.mp4" in msgs["corrupt"]

    enc = ClipImageEncoder(ClipSpec.tiny(), "fp32")
    by_id = {r["video_id"]: r for r in rows}
    for rec in good:
        r = by_id[rec["video_id"]]
        info, direct = extract_video(rec["path"], enc, opts)
        assert r["num_frames"] == info.num_frames
        assert r["snippet_count"] == -(-info.num_frames // 16)
        assert r["label"] == rec["label"]
        assert abs(r["fps"] - info.fps) < 1e-6
        np.testing.assert_allclose(row_features(r), direct[0], rtol=1e-5, atol=1e-5)

    # resume: nothing is redone, nothing duplicated; with nothing to do the run writes nothing to
    # the tables (no lease, no commit: a live run is never fenced by it) and leaves a part an
    # interrupted run left uncommitted to the next run with work
    versions = {d: table_history.version(out / d) for d in ("features", "errors")}
    leases = sorted(os.listdir(out / "features" / "_leases"))
    stray = out / "features" / "part-99991231000000-dead00-w000-00000.parquet"
    shutil.copy(sorted(glob.glob(str(out / "features" / "part-*.parquet")))[0], stray)
    s2 = run_extract(sample_videos["manifest"], str(out), opts, log=lambda *_: None)
    assert s2["videos_ok"] == 0 and s2["videos_skipped"] == len(good) + len(bad)
    assert {d: table_history.version(out / d) for d in ("features", "errors")} == versions
    assert sorted(os.listdir(out / "features" / "_leases")) == leases and stray.exists()
    # ... while the folder's own counts cover every run, failures listed with their errors
    assert s2["folder"]["videos_ok"] == len(by_id) and s2["folder"]["videos_failed"] == len(msgs)
    assert {f["video_id"]: f["error"] for f in s2["folder"]["failed"]} == msgs
    assert len(read_feature_rows(str(out / "features"))) == len(rows)

    # a partial earlier run: delete one part file's worth → only the missing videos run
    parts = sorted(glob.glob(str(out / "features" / "part-*.parquet")))
    os.remove(parts[0])
    s3 = run_extract(sample_videos["manifest"], str(out), opts, log=lambda *_: None)
    assert s3["videos_ok"] == len(rows)
    assert not stray.exists()
    again = read_feature_rows(str(out / "features"))
    assert sorted(r["video_id"] for r in again) == sorted(r["video_id"] for r in rows)


def test_five_crop_rows_and_a_cuda_decode_request_on_a_cpu_cluster(ray_local, sample_videos, tmp_path,
                                                                   expected_decoder):
    """Five crops per video; ``decode_device="cuda"`` on a cluster without GPUs says so
    and decodes on the CPU, with the features decord's frames give."""
    rec = sample_videos["good"][0]
    opts = _opts(crops=5, decode_device="cuda")
    lines = []
    s = run_extract(rec["path"], str(tmp_path / "f5"), opts, log=lines.append)
    rows = read_feature_rows(str(tmp_path / "f5" / "features"))
    assert sorted(r["crop"] for r in rows) == [0, 1, 2, 3, 4]
    assert len({r["snippet_count"] for r in rows}) == 1
    assert any("decode device cuda: the cluster has no GPU" in ln for ln in lines)
    assert s["decoders"] == [expected_decoder]
    enc = ClipImageEncoder(ClipSpec.tiny(), "fp32")
    _, direct = extract_video(rec["path"], enc, _opts(crops=5, decoder="decord"))
    for r in rows:
        np.testing.assert_allclose(row_features(r), direct[r["crop"]], rtol=1e-5, atol=1e-5)


def test_a_crop_count_the_official_code_never_used_is_refused_before_anything_runs(sample_videos, tmp_path):
    """The Python API takes any int for crops; 2 used to fail inside a Ray task with a
    traceback. It is refused at once, in one line, and the folder is never made."""
    from vadclip.errors import InputError

    with pytest.raises(InputError, match="crops=2: the official crops are 1, 5 or 10"):
        run_extract(sample_videos["manifest"], str(tmp_path / "out"), ExtractOptions(clip=ClipSpec.tiny(), crops=2),
                    log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_manifest_forms(sample_videos, tmp_path):
    m = load_manifest(sample_videos["manifest"])
    assert len(m) == len(sample_videos["good"]) + len(sample_videos["bad"])
    assert load_manifest(str(sample_videos["dir"]))          # a directory
    assert load_manifest(str(sample_videos["dir"] / "clip00*.mp4"))  # a glob
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_manifest(str(tmp_path / "nothing-here" / "*.mp4"))


@pytest.mark.slow
def test_cpu_auto_precision_is_never_the_slower_one_and_bf16_matches_fp32(sample_videos):
    """On the CPU, auto takes bf16 only where it is native and faster: the encoder it
    picks is timed here against the other precision on the same crops of real videos;
    bf16 features stay within cosine 0.999 of fp32 (ViT-B-16 sized, random weights:
    the same FLOPs as the pretrained model, no download)."""
    import time

    import torch

    torch.set_num_threads(2)
    x = np.concatenate([c for rec in sample_videos["good"][:2]
                        for c in iter_snippet_chunks(rec["path"], 16, 224, 1, 4)[1]])[:6]
    spec = ClipSpec("ViT-B-16", None)
    auto = ClipImageEncoder(spec, "auto", device="cpu")
    other = ClipImageEncoder(spec, "fp32" if auto.precision == "bf16" else "bf16", device="cpu")
    times = {}
    for enc in (auto, other, auto, other):
        enc.encode(x[:1])
        t = time.perf_counter()
        enc.encode(x)
        times[enc.precision] = min(times.get(enc.precision, float("inf")), time.perf_counter() - t)
    assert times[auto.precision] <= times[other.precision] * 1.05, (auto.precision_why, times)
    if not cpu_bf16_flags():
        assert auto.precision == "fp32"
    f32, f16 = (auto, other) if auto.precision == "fp32" else (other, auto)
    a, b = f32.encode(x)[:, 0], f16.encode(x)[:, 0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999, cos


def test_a_video_replaced_at_the_same_path_is_extracted_again(ray_local, sample_videos, tmp_path):
    """Rows remember their input's size and modification time: a camera's file rewritten
    under the same name is extracted again on the next run (its old rows replaced, one
    row per video still), an unchanged one is not."""
    import shutil

    good = sample_videos["good"]
    src = tmp_path / "cams"
    src.mkdir()
    shutil.copy(good[0]["path"], src / "cam1.mp4")
    shutil.copy(good[1]["path"], src / "cam2.mp4")
    out = tmp_path / "out"
    s1 = run_extract(str(src), str(out), _opts(), log=lambda *_: None)
    assert s1["videos_ok"] == 2 and s1["videos_changed"] == 0
    before = {r["video_id"]: r for r in read_feature_rows(str(out / "features"))}
    shutil.copy(good[2]["path"], src / "cam1.mp4")           # rewritten with other footage
    lines = []
    v1 = table_history.version(out / "features")
    s2 = run_extract(str(src), str(out), _opts(), log=lines.append)
    assert s2["videos_changed"] == 1 and s2["videos_ok"] == 1 and s2["videos_skipped"] == 1
    # a reader of the table at any moment of the run saw each video's row once: the old row went
    # in the commit that added the new one (a plain Delta reader, version by version)
    history = table_history.rows_per_path(out / "features", v1)
    assert len(history) >= 3 and all(h == {str(src / "cam1.mp4"): 1, str(src / "cam2.mp4"): 1} for h in history)
    assert any("1 videos changed since their rows were written" in ln for ln in lines)
    after = {r["video_id"]: r for r in read_feature_rows(str(out / "features"))}
    assert sorted(after) == ["cam1", "cam2"] and len(read_feature_rows(str(out / "features"))) == 2
    info, direct = extract_video(good[2]["path"], ClipImageEncoder(ClipSpec.tiny(), "fp32"), _opts())
    assert after["cam1"]["num_frames"] == info.num_frames
    np.testing.assert_allclose(row_features(after["cam1"]), direct[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(row_features(after["cam2"]), row_features(before["cam2"]))
    s3 = run_extract(str(src), str(out), _opts(), log=lambda *_: None)
    assert s3["videos_changed"] == 0 and s3["videos_ok"] == 0 and s3["videos_skipped"] == 2


def test_every_found_path_ends_as_a_row_or_an_error_row(ray_local, sample_videos, tmp_path):
    """A folder listing keeps a broken symbolic link (a camera's file rotated away):
    it becomes an error row saying file not found, never a silent gap."""
    import shutil

    from vadclip.io.parts import read_column

    d = tmp_path / "cams"
    d.mkdir()
    shutil.copy(sample_videos["good"][0]["path"], d / "ok.mp4")
    os.symlink(tmp_path / "rotated-away.mp4", d / "gone.mp4")
    s = run_extract(str(d), str(tmp_path / "out"), ExtractOptions(clip=ClipSpec.tiny(), precision="fp32"),
                    log=lambda *_: None)
    assert s["videos_total"] == 2 and s["videos_ok"] == 1 and s["videos_failed"] == 1
    errs = pq.read_table(str(tmp_path / "out" / "errors"), columns=["video_id", "error"]).to_pylist()
    assert [e["video_id"] for e in errs] == ["gone"] and "file not found" in errs[0]["error"]
    assert read_column(str(tmp_path / "out" / "features"), "video_id") == ["ok"]


def test_the_encoders_gpu_shape_comes_from_the_command(sample_videos, tmp_path, capsys):
    """--device cuda on a cluster that has no GPU and whose autoscaler can launch none
    fails as the environment's problem (exit 3) before the output folder is touched;
    auto there encodes on the CPU and says so once."""
    from vadclip.cli import main

    out = tmp_path / "out"
    assert main(["extract", sample_videos["manifest"], "--out", str(out), "--tiny-clip", "--device", "cuda"]) == 3
    assert "--device cuda: the cluster has no GPU and its autoscaler can launch none" in capsys.readouterr().err
    assert not out.exists()
    assert main(["extract", sample_videos["manifest"], "--out", str(out), "--tiny-clip", "--precision", "fp32"]) == 0
    err = capsys.readouterr().err
    assert err.count("no GPU in the cluster and none its autoscaler can launch: the encoders run on CPUs") == 1


def test_a_job_whose_stderr_is_no_terminal_still_says_how_far_it_is(sample_videos, tmp_path):
    """Under `ray job submit` stderr is a log, not a terminal: a progress line (videos
    done/total, failures, rate, time left) comes at most every VADCLIP_PROGRESS_S seconds."""
    import re
    import subprocess
    import sys

    env = dict(os.environ, VADCLIP_PROGRESS_S="1", VADCLIP_PROGRESS_BARS="0")
    r = subprocess.run([sys.executable, "-m", "vadclip.cli", "extract", sample_videos["manifest"], "--out",
                        str(tmp_path / "out"), "--tiny-clip", "--batch-size", "8", "--precision", "fp32"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = re.findall(r"\[extract\] progress: (\d+)/(\d+) videos \((\d+) failed\), [\d.]+ videos/min, .*", r.stderr)
    assert lines, r.stderr[-2000:]
    assert all(int(t) == len(sample_videos["good"]) + len(sample_videos["bad"]) for _, t, _ in lines)
    assert [int(d) for d, _, _ in lines] == sorted(int(d) for d, _, _ in lines)


def test_an_encoder_holding_a_gpu_without_cuda_fails_as_the_environments_problem(sample_videos, tmp_path):
    """A node that declares a GPU Ray can give, but where CUDA does not work (this
    machine: a local Ray told it has one GPU): `--device cuda` fails in one line, exit 3,
    naming the node — never encodes on its CPU while holding the GPU, never a video error."""
    import subprocess
    import sys

    script = ("import sys, ray\n"
              "ray.init(address='local', num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)\n"
              "from vadclip.cli import main\n"
              "sys.exit(main(['extract', sys.argv[1], '--out', sys.argv[2], '--tiny-clip', '--device', 'cuda']))\n")
    r = subprocess.run([sys.executable, "-c", script, sample_videos["manifest"], str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, VADCLIP_PROGRESS_BARS="0"))
    assert r.returncode == 3, r.stderr[-2000:]
    assert "error (environment): encoder on node" in r.stderr and "holds a GPU but CUDA is not available" in r.stderr
    assert not glob.glob(str(tmp_path / "out" / "errors" / "part-*"))


def test_a_folder_keeps_the_ids_it_gave_and_a_new_video_never_takes_one(ray_local, sample_videos, tmp_path):
    """Rows written before (under an earlier id rule, or a manifest's own ids) keep their
    ids when the folder is extracted again; a new video whose id the folder already
    gives another path takes more of its folders instead."""
    import shutil

    good = sample_videos["good"]
    cams = tmp_path / "cams"
    for cam, rec in (("cam1", good[0]), ("cam2", good[1])):
        (cams / cam / "2026-11-01").mkdir(parents=True)
        shutil.copy(rec["path"], cams / cam / "2026-11-01" / "00.mp4")
    first = tmp_path / "first.csv"
    first.write_text(f"path,video_id\n{cams / 'cam1' / '2026-11-01' / '00.mp4'},cam2/2026-11-01/00\n")
    out = tmp_path / "out"
    run_extract(str(first), str(out), _opts(), log=lambda *_: None)
    s = run_extract(str(cams), str(out), _opts(), log=lambda *_: None)
    assert s["videos_ok"] == 1 and s["videos_skipped"] == 1
    ids = {os.path.relpath(r["path"], cams): r["video_id"] for r in read_feature_rows(str(out / "features"))}
    assert ids == {"cam1/2026-11-01/00.mp4": "cam2/2026-11-01/00", "cam2/2026-11-01/00.mp4": "cams/cam2/2026-11-01/00"}


def test_manifest_corrections_are_the_rows_whose_manifest_columns_now_say_otherwise(tmp_path):
    """What a nightly run asks of every done video (each part's columns compared with the
    manifest's as Arrow, a Python object only for a row that differs): only
    a row whose label or manifest columns differ in value is corrected; a start_time taken
    from the container stays unless the manifest now gives one; an older part without a
    ``meta`` column reads as none."""
    import json

    import pyarrow as pa

    from vadclip.io.parts import PartWriter
    from vadclip.jobs.extract import manifest_corrections
    from vadclip.jobs.manifest import MANIFEST

    def meta(**kw):
        return json.dumps(kw, sort_keys=True)

    rows = [("same", None, meta(camera="gate")), ("moved", None, meta(camera="gate")),
            ("relabelled", None, ""), ("stamped", None, meta(start_time="2026-11-01T07:00:00+00:00",
                                                             start_time_from="container")),
            ("stamped-now-given", None, meta(start_time="2026-11-01T07:00:00+00:00", start_time_from="container")),
            ("skipped", None, meta(camera="a")), ("reordered", "Fire", '{"site": "x", "camera": "c"}')]
    schema = pa.schema([("path", pa.string()), ("video_id", pa.string()), ("label", pa.string()),
                        ("meta", pa.string())])
    w = PartWriter(str(tmp_path / "rows"), schema, rows_per_file=2, run_id="t", flush_seconds=None)
    for path, label, m in rows:       # two crop rows a video, saying the same
        w.add([{"path": path, "video_id": path, "label": label, "meta": m}] * 2, whole=True)
    w.flush()
    old = PartWriter(str(tmp_path / "rows"), schema.remove(3), rows_per_file=2, run_id="o", flush_seconds=None)
    old.add([{"path": "old-part", "video_id": "old-part", "label": None}], whole=True)
    old.flush()
    items = [{"path": "same", "label": None, "meta": meta(camera="gate")},
             {"path": "moved", "label": None, "meta": meta(camera="lobby")},
             {"path": "relabelled", "label": "Fire", "meta": ""},
             {"path": "stamped", "label": None, "meta": ""},
             {"path": "stamped-now-given", "label": None, "meta": meta(start_time="2026-11-01T08:00:00+00:00")},
             {"path": "skipped", "label": None, "meta": meta(camera="b")},
             {"path": "reordered", "label": "Fire", "meta": meta(camera="c", site="x")},
             {"path": "old-part", "label": None, "meta": meta(camera="yard")},
             {"path": "new", "label": None, "meta": meta(camera="gate")}]
    items = pa.Table.from_pylist(items, schema=MANIFEST)
    got = manifest_corrections(items, str(tmp_path / "rows"), {"skipped"})
    assert got == {"moved": {"label": "", "meta": meta(camera="lobby")},
                   "relabelled": {"label": "Fire", "meta": ""},
                   "stamped-now-given": {"label": "", "meta": meta(start_time="2026-11-01T08:00:00+00:00")},
                   "old-part": {"label": "", "meta": meta(camera="yard")}}
    assert manifest_corrections(MANIFEST.empty_table(), str(tmp_path / "rows"), set()) == {}
    assert manifest_corrections(items, str(tmp_path / "nothing"), set()) == {}


def test_a_plan_longer_than_a_window_runs_as_consecutive_pipelines_each_video_once(ray_local, sample_videos,
                                                                                   tmp_path, monkeypatch):
    """A first run over a year's archive is longer than one pipeline's window: it runs as
    consecutive pipelines over windows of the plan (here two videos each), every video in a
    decode task of its own, and each video ends once, as a row or an error row."""
    import shutil

    from vadclip.jobs import extract

    d = tmp_path / "cams"
    d.mkdir()
    for i in range(5):
        shutil.copy(sample_videos["good"][i % len(sample_videos["good"])]["path"], d / f"cam{i}.mp4")
    monkeypatch.setattr(extract, "WINDOW", 2)
    s = run_extract(str(d), str(tmp_path / "out"), _opts(), log=lambda *_: None)
    assert s["videos_ok"] == 5 and s["videos_failed"] == 0 and s["rounds"] == 1
    ids = pq.read_table(str(tmp_path / "out" / "features"), columns=["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == [f"cam{i}" for i in range(5)]
