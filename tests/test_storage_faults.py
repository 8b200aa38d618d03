"""Object storage that throttles and drops connections (issue #34): the real S3-API
server (moto's, on 127.0.0.1) behind a fault-injecting proxy (:mod:`faultproxy`) that
answers a share of PUTs and GETs/HEADs with ``503 SlowDown``, resets some connections
and answers some requests late.  ``vadclip extract`` of a bucket folder and ``vadclip
score`` of its features, each as a user runs it (the CLI in its own process, its own
embedded Ray, every request through the proxy), end with exit 0 and every row exactly
once — checked on the server directly, past the proxy."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from faultproxy import fault_proxy
from s3server import s3_server

pytestmark = pytest.mark.slow
CLASSES = ["Normal", "Explosion", "Fighting", "RoadAccidents"]


def _cli(args, endpoint, tmp_path):
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, VADCLIP_PROGRESS_BARS="0",
               VADCLIP_DATA_NO_PROGRESS_TIMEOUT_S="300", VADCLIP_SCRATCH=str(tmp_path / "scratch"))
    return subprocess.run([sys.executable, "-m", "vadclip.cli", *args], capture_output=True, text=True, timeout=900,
                          env=env)


def test_throttled_storage_loses_no_row_and_duplicates_none(tmp_path):
    from vadclip import tiny_config
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.network import build_model
    from vadclip.io.parts import read_column
    from vadclip.video.samples import make_sample_set

    man, _ = make_sample_set(str(tmp_path / "cams"), 6, 6, frames_range=(40, 120), seed=3, prefix="cam")
    (tmp_path / "cams" / "broken.mp4").write_bytes(b"not a video at all")
    with s3_server("archive", "vad") as s3:
        for f in sorted(os.listdir(tmp_path / "cams")):
            if f.endswith(".mp4"):
                s3.upload_file(str(tmp_path / "cams" / f), "archive", f"cams/{f}")
        model = tmp_path / "model.pt"
        save_checkpoint(build_model(tiny_config("custom", classes=CLASSES, visual_length=32, visual_layers=1)),
                        str(model))
        moto = os.environ["AWS_ENDPOINT_URL"]
        with fault_proxy(moto, {"PUT": 0.5, "POST": 0.5, "GET": 0.3, "HEAD": 0.3, "DELETE": 0.3},
                         reset=0.03, slow=0.05, slow_s=0.5, seed=1) as proxy:
            ex = _cli(["extract", "s3://archive/cams/", "--out", "s3://vad/feat", "--tiny-clip", "--decoder",
                       "decord", "--precision", "fp32", "--rows-per-file", "3", "--flush-seconds", "1"],
                      proxy.url, tmp_path)
            extract_counts = dict(proxy.counts)
            sc = _cli(["score", "--model", str(model), "--features", "s3://vad/feat/features", "--out",
                       "s3://vad/scores", "--max-plots", "2"], proxy.url, tmp_path)
            counts = dict(proxy.counts)
        print("proxy counts after extract:", json.dumps(extract_counts, sort_keys=True))
        print("proxy counts in all:", json.dumps(counts, sort_keys=True))
        assert ex.returncode == 0, ex.stderr[-3000:]
        assert sc.returncode == 0, sc.stderr[-3000:]
        # the proxy really did throttle both jobs' writes and reads
        assert extract_counts.get("PUT 503", 0) >= 10 and extract_counts.get("GET 503", 0) + \
            extract_counts.get("HEAD 503", 0) >= 10
        assert counts.get("PUT 503", 0) > extract_counts.get("PUT 503", 0)
        # on the server, past the proxy: every good video once, the broken one an error row
        good = sorted(r["video_id"] for r in man)
        feats = read_column("s3://vad/feat/features", "video_id")
        errs = read_column("s3://vad/feat/errors", "video_id")
        assert sorted(feats) == good, (len(feats), len(good))
        assert errs == ["broken"]
        scored = read_column("s3://vad/scores/scores", "video_id")
        assert sorted(scored) == good
        s = json.loads(ex.stdout)
        assert s["videos_ok"] == len(good) and s["videos_failed"] == 1
        assert json.loads(sc.stdout)["videos_scored"] == len(good)


def test_a_video_whose_read_stalls_becomes_an_error_row_and_the_job_goes_on(tmp_path):
    """One object whose GET hangs (the proxy holds it for a minute): with
    --stall-timeout-s 5 (no byte comes) it becomes an error row naming the deadline, the
    other videos are written and the job ends with exit 0; --retry-failed, the store well
    again, writes it."""
    from vadclip.io.parts import read_column
    from vadclip.video.samples import make_sample_set

    man, _ = make_sample_set(str(tmp_path / "cams"), 2, 1, frames_range=(40, 80), seed=4, prefix="cam")
    with s3_server("archive", "vad") as s3:
        for f in sorted(os.listdir(tmp_path / "cams")):
            if f.endswith(".mp4"):
                key = "stuck.mp4" if f == "cam000.mp4" else f
                s3.upload_file(str(tmp_path / "cams" / f), "archive", f"cams/{key}")
        args = ["extract", "s3://archive/cams/", "--out", "s3://vad/feat", "--tiny-clip", "--decoder", "decord",
                "--precision", "fp32", "--stall-timeout-s", "5"]
        with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}, stall={"stuck.mp4": 60}) as proxy:
            r = _cli(args, proxy.url, tmp_path)
            assert proxy.counts["GET stalled"] >= 1
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(read_column("s3://vad/feat/features", "video_id")) == ["cam001", "cam002"]
        errs = read_column("s3://vad/feat/errors", "error")
        assert len(errs) == 1 and "stuck.mp4" in errs[0] and "no progress for 5 s (--stall-timeout-s)" in errs[0]
        r = _cli(args + ["--retry-failed"], os.environ["AWS_ENDPOINT_URL"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(read_column("s3://vad/feat/features", "video_id")) == ["cam001", "cam002", "stuck"]
        assert read_column("s3://vad/feat/errors", "video_id") == []


def test_a_store_that_denies_access_fails_the_job_in_one_line(tmp_path):
    """The output bucket answers every upload with 403 AccessDenied (a role without write
    permission, an expired credential): the environment's problem, never a video's — one line
    naming it, exit 3, no traceback, no error row."""
    from vadclip.video.samples import make_sample_set

    make_sample_set(str(tmp_path / "cams"), 1, 1, frames_range=(40, 60), seed=5, prefix="cam")
    with s3_server("archive", "vad") as s3:
        for f in sorted(os.listdir(tmp_path / "cams")):
            if f.endswith(".mp4"):
                s3.upload_file(str(tmp_path / "cams" / f), "archive", f"cams/{f}")
        with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}, deny={"PUT", "POST"}) as proxy:
            r = _cli(["extract", "s3://archive/cams/", "--out", "s3://vad/feat", "--tiny-clip", "--decoder", "decord"],
                     proxy.url, tmp_path)
            assert proxy.counts["PUT denied"] + proxy.counts["POST denied"] >= 1
        assert r.returncode == 3, r.stderr[-3000:]
        _one_environment_line(r.stderr, "storage refused", "Access Denied")
        assert not s3.list_objects_v2(Bucket="vad").get("Contents")


def test_a_full_disk_fails_the_job_in_one_line(isolation, tmp_path):
    """The output folder on a disk that fills up (a 96 kB tmpfs in a private mount
    namespace): one line naming it, exit 3, no traceback; what did fit is never counted as
    bad videos."""
    from isolation import run_isolated
    from vadclip.video.samples import make_sample_set, write_manifest

    man, _ = make_sample_set(str(tmp_path / "cams"), 3, 3, frames_range=(120, 160), seed=6, prefix="cam")
    write_manifest(man, str(tmp_path / "cams.csv"))
    out = tmp_path / "small"
    out.mkdir()
    r = run_isolated([sys.executable, "-m", "vadclip.cli", "extract", str(tmp_path / "cams.csv"), "--out", str(out),
                      "--tiny-clip", "--decoder", "decord", "--crops", "10", "--rows-per-file", "1"],
                     small_disk=(str(out), "96k"), timeout=600)
    assert r.returncode == 3, r.stderr[-3000:]
    _one_environment_line(r.stderr, "storage refused", "No space left on device", str(out))


def _one_environment_line(err, *expected):
    """stderr of a job the environment stopped: no traceback, one ``vadclip CMD: error
    (environment):`` line holding each of ``expected``."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("vadclip ")]
    assert len(lines) == 1 and ": error (environment): " in lines[0], err[-3000:]
    assert all(e in lines[0] for e in expected) and "ray::" not in lines[0], lines[0]


def test_a_rerun_finds_what_changed_from_the_listing_not_a_request_per_video(tmp_path):
    """Issue #45: the archive's listing carries each object's size and modification time; a
    re-run with nothing new makes no HEAD per archived video (counted at a proxy in front of the
    S3-API server), and a recording rewritten in place is found from that listing and run again."""
    from vadclip.io.parts import read_column
    from vadclip.video.samples import make_sample_set, write_video

    n = 16
    make_sample_set(str(tmp_path / "cams"), n // 2, n // 2, frames_range=(40, 60), seed=8, prefix="cam")
    args = ["extract", "s3://archive/cams/", "--out", "s3://vad/feat", "--tiny-clip", "--decoder", "decord"]
    with s3_server("archive", "vad") as s3:
        names = sorted(f for f in os.listdir(tmp_path / "cams") if f.endswith(".mp4"))
        for f in names:
            s3.upload_file(str(tmp_path / "cams" / f), "archive", f"cams/{f}")
        r = _cli(args, os.environ["AWS_ENDPOINT_URL"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}) as proxy:
            r = _cli(args, proxy.url, tmp_path)
            counts, seen = dict(proxy.counts), list(proxy.seen)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["videos_skipped"] == n
        print(f"\nno-op re-run over {n} videos: {counts}")
        # no request names an archived video (it was a HEAD each): the listing of cams/ said it all
        assert not [(m, p) for m, p in seen if p.startswith("/archive/cams/")], seen
        # and each committed part of the output is read once, without a HEAD (its size is in the table's
        # log): its footer and its small columns, two GETs (it was a dozen opens, a HEAD each)
        assert not [p for m, p in seen if m == "HEAD" and p.endswith(".parquet")], seen
        part_gets = Counter(p for m, p in seen if m == "GET" and p.endswith(".parquet"))
        assert part_gets and max(part_gets.values()) <= 2, part_gets

        write_video(str(tmp_path / "new.mp4"), 90, seed=42)           # the NVR rewrites one recording
        s3.upload_file(str(tmp_path / "new.mp4"), "archive", f"cams/{names[3]}")
        with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}) as proxy:
            r = _cli(args, proxy.url, tmp_path)
            archive = {p for m, p in proxy.seen if p.startswith("/archive/cams/")}
        assert r.returncode == 0, r.stderr[-3000:]
        s = json.loads(r.stdout)
        assert s["videos_ok"] == 1 and s["videos_skipped"] == n - 1
        assert archive == {f"/archive/cams/{names[3]}"}, archive      # only the rewritten one is read
        assert sorted(read_column("s3://vad/feat/features", "video_id")) == sorted(f[:-4] for f in names)


def test_a_video_that_cannot_fit_in_scratch_is_the_environments_problem(isolation, tmp_path):
    """A remote recording larger than the node's free scratch (a 64 kB tmpfs as
    VADCLIP_SCRATCH in a private mount namespace): said before a byte is copied, in one line,
    exit 3 — never an error row blaming the video."""
    from vadclip.video.samples import write_video

    write_video(str(tmp_path / "big.mp4"), 1200, width=320, height=240, seed=3)
    assert os.path.getsize(tmp_path / "big.mp4") > 128_000                     # twice the scratch disk
    r = _extract_with_small_scratch(tmp_path, "big.mp4", "--decoder", "decord")
    assert r.returncode == 3, r.stderr[-3000:]
    _one_environment_line(r.stderr, "big.mp4", "do not fit in this node's scratch")


def test_ten_crop_videos_are_never_half_written_through_a_storage_outage(tmp_path):
    """Issue #43: 10-crop extraction with parts of 4 rows; once the first part is committed
    the store refuses every upload (403, as an expired role would), so the job fails loudly
    part-way (exit 3). Read as it is, the folder holds each video with all ten crops or not at
    all; the re-run, the store well again, leaves every video with its ten crops exactly once."""
    import threading
    import time
    from collections import Counter

    import boto3

    from vadclip.io.parts import read_column
    from vadclip.video.samples import make_sample_set

    make_sample_set(str(tmp_path / "cams"), 3, 3, frames_range=(60, 90), seed=9, prefix="cam")
    args = ["extract", "s3://archive/cams/", "--out", "s3://vad/feat", "--tiny-clip", "--decoder", "decord",
            "--crops", "10", "--rows-per-file", "4", "--flush-seconds", "1"]
    with s3_server("archive", "vad") as s3:
        names = sorted(f for f in os.listdir(tmp_path / "cams") if f.endswith(".mp4"))
        for f in names:
            s3.upload_file(str(tmp_path / "cams" / f), "archive", f"cams/{f}")
        with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}) as proxy:
            s3c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
            stop = threading.Event()

            def rows_committed():
                # a commit of the Delta log that adds a part (the lease's commit and a schema
                # change add none)
                keys = [o["Key"] for o in s3c.list_objects_v2(Bucket="vad", Prefix="feat/features/_delta_log/")
                        .get("Contents", []) if o["Key"].endswith(".json")]
                return any(b'"add"' in s3c.get_object(Bucket="vad", Key=k)["Body"].read() for k in keys)

            def outage_after_first_commit():
                while not stop.is_set():
                    if rows_committed():
                        proxy.deny = {"PUT", "POST"}
                        return
                    time.sleep(0.05)

            t = threading.Thread(target=outage_after_first_commit, daemon=True)
            t.start()
            r = _cli(args, proxy.url, tmp_path)
            stop.set()
        assert r.returncode == 3, r.stderr[-3000:]
        assert "Traceback" not in r.stderr and proxy.counts["PUT denied"] >= 1
        crops = Counter(read_column("s3://vad/feat/features", "video_id"))
        assert crops and set(crops.values()) == {10}, crops            # whole videos only, before any re-run
        r = _cli(args, os.environ["AWS_ENDPOINT_URL"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        crops = Counter(read_column("s3://vad/feat/features", "video_id"))
        assert crops == {f[:-4]: 10 for f in names}, crops
        pairs = list(zip(read_column("s3://vad/feat/features", "video_id"),
                         read_column("s3://vad/feat/features", "crop")))
        assert len(pairs) == len(set(pairs)) == 10 * len(names)


def test_a_dvr_export_in_storage_is_decoded_in_place_without_scratch(isolation, tmp_path):
    """An MPEG-TS recording (what DVRs export, decoded in order by PyAV) larger than the
    node's whole scratch disk (a 64 kB tmpfs): read where it lies through range requests,
    never copied, so it extracts — every snippet, the frames the file holds."""
    import pyarrow.parquet as pq

    from vadclip.video.decode import PyAVReader
    from vadclip.video.samples import write_numbered_video

    write_numbered_video(str(tmp_path / "dvr.ts"), 600, "libx264")
    assert os.path.getsize(tmp_path / "dvr.ts") > 128_000                      # twice the scratch disk
    r = _extract_with_small_scratch(tmp_path, "dvr.ts")
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = pq.read_table(str(tmp_path / "o" / "features")).to_pylist()
    assert row["video_id"] == "dvr" and row["decoder"] == "pyav"
    assert row["num_frames"] == PyAVReader(str(tmp_path / "dvr.ts"), "dvr.ts").num_frames == 600


def _extract_with_small_scratch(tmp_path, name, *flags):
    """``vadclip extract`` of the one video ``tmp_path/name``, uploaded to the S3-API server,
    on a node whose scratch disk (VADCLIP_SCRATCH) is a 64 kB tmpfs in a private mount namespace."""
    from isolation import run_isolated

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with s3_server("archive", "vad") as s3:
        s3.upload_file(str(tmp_path / name), "archive", f"cams/{name}")
        return run_isolated([sys.executable, "-m", "vadclip.cli", "extract", "s3://archive/cams/", "--out",
                             str(tmp_path / "o"), "--tiny-clip", *flags],
                            small_disk=(str(scratch), "64k"), timeout=600,
                            env={"VADCLIP_SCRATCH": str(scratch), "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]})


def test_a_recording_streams_to_its_writer_while_it_is_read(tmp_path):
    """A recording streams through the pipeline (issue #46): read from the store with
    every GET answered late, it is decoded over seconds, and its writer stages segments all
    along, not in a burst once its decode task has ended (Ray Data's default blocks held a
    decode task's chunks until 128 MiB of frames, and write tasks that asked for a CPU
    waited for the decode task's).  Watched from outside: the staged segment parts
    (``part-…-sNNNNN.parquet``) appear in the output folder over most of the read."""
    import re
    import threading
    import time

    from vadclip.io.features import read_feature_rows, row_features
    from vadclip.video.samples import write_video

    write_video(str(tmp_path / "cam.mp4"), 6000, fps=25.0, width=160, height=120)      # 375 snippets
    out = tmp_path / "x"
    seen, done = {}, threading.Event()

    def watch():
        while not done.is_set():
            d = out / "features"
            for n in (os.listdir(d) if d.is_dir() else []):
                if n.startswith("part-") and n.endswith(".parquet"):
                    seen.setdefault(n, time.monotonic())
            time.sleep(0.02)

    with s3_server("archive") as s3:
        s3.upload_file(str(tmp_path / "cam.mp4"), "archive", "cams/cam.mp4")
        w = threading.Thread(target=watch)
        w.start()
        try:
            # PyAV reads the object through ranged GETs, each answered 0.25 s late
            with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}, slow=1.0, slow_s=0.25) as proxy:
                r = _cli(["extract", "s3://archive/cams/", "--out", str(out), "--tiny-clip", "--decoder", "pyav",
                          "--precision", "fp32", "--batch-size", "8", "--segment-snippets", "16"], proxy.url, tmp_path)
        finally:
            done.set()
            w.join()
    assert r.returncode == 0, r.stderr[-3000:]
    assert proxy.counts["GET slow"] >= 10, proxy.counts
    rows = read_feature_rows(str(out / "features"))
    assert [row["video_id"] for row in rows] == ["cam"] and row_features(rows[0]).shape[0] == 375
    staged = {n: t for n, t in seen.items() if re.search(r"-s\d{5}\.parquet$", n)}
    assert len(staged) >= 20, sorted(seen)        # rows of 8 snippets, the last part committing the others
    first, last = min(staged.values()), max(staged.values())
    end = max(t for n, t in seen.items() if n not in staged)      # the recording's last part, its commit
    # from the first staged segment to the recording's last part, staging went on all along
    assert last - first >= 3.0 and last - first >= 0.6 * (end - first), (last - first, end - first, proxy.counts)


def test_a_recording_larger_than_copy_max_mb_is_decoded_where_it_lies(tmp_path):
    """Scratch per decode task is bounded whatever a recording's size (issue #46): a video
    in the store larger than --copy-max-mb is read through range requests (PyAV, in order)
    and never copied to node-local scratch; below it, it is copied and removed after.  Both
    give the video's rows, and each row names its decoder.  Watched from outside: the
    scratch folder's size while each job runs."""
    import threading
    import time

    from vadclip.io.features import read_feature_rows, row_features
    from vadclip.video.samples import write_video

    write_video(str(tmp_path / "cam.mp4"), 1200, fps=25.0, width=320, height=240)       # 75 snippets
    size = os.path.getsize(tmp_path / "cam.mp4")
    scratch = tmp_path / "scratch"

    def run(out, extra):
        most, done = [0], threading.Event()

        def watch():
            while not done.is_set():
                held = sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file()) if scratch.is_dir() else 0
                most[0] = max(most[0], held)
                time.sleep(0.01)

        w = threading.Thread(target=watch)
        w.start()
        try:
            # every GET a little late, so a copy sits in scratch long enough to be seen
            with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}, slow=1.0, slow_s=0.2) as proxy:
                r = _cli(["extract", "s3://archive/cams/", "--out", str(out), "--tiny-clip", "--precision", "fp32",
                          *extra], proxy.url, tmp_path)
        finally:
            done.set()
            w.join()
        assert r.returncode == 0, r.stderr[-3000:]
        rows = read_feature_rows(str(out / "features"))
        assert [row["video_id"] for row in rows] == ["cam"] and row_features(rows[0]).shape[0] == 75
        return rows[0]["decoder"], most[0], proxy.counts["GET requests"]

    with s3_server("archive") as s3:
        s3.upload_file(str(tmp_path / "cam.mp4"), "archive", "cams/cam.mp4")
        copied = run(tmp_path / "a", [])
        streamed = run(tmp_path / "b", ["--copy-max-mb", f"{size / 2 / 1e6:.6f}"])
    assert copied[0] != "pyav" and copied[1] >= size, copied        # the whole file sat in scratch
    assert streamed[0] == "pyav" and streamed[1] == 0, streamed     # nothing did
    assert list(scratch.rglob("*.mp4")) == []                       # the copy was removed after
