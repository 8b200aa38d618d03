"""The storage layer on its own: committed part files (local), and paths, globs,
whole-object writes and scratch copies against a real S3-API server process."""
import os

import pyarrow as pa
import pytest

from s3server import s3_server
from vadclip.io import storage
from vadclip.io.features import ERROR_SCHEMA
from vadclip.io.parts import MARKERS, PartWriter, dataset_files, part_files, read_column, remove_uncommitted
from vadclip.video.decode import VideoError, fetched


def _rows(*ids):
    return [{"path": f"/v/{i}.mp4", "video_id": i, "stage": "extract", "error": "x"} for i in ids]


def _writer(d, run_id="r1"):
    return PartWriter(str(d), ERROR_SCHEMA, rows_per_file=2, run_id=run_id, flush_seconds=None)


def test_only_committed_parts_count_and_leftovers_are_removed(tmp_path):
    w = _writer(tmp_path)
    w.add(_rows("a", "b"))
    w.add(_rows("c"))
    w.flush()
    assert sorted(read_column(str(tmp_path), "video_id")) == ["a", "b", "c"]
    # the commits are a Delta log: a reader that knows nothing of vadclip sees the same rows
    from deltalake import DeltaTable

    assert sorted(DeltaTable(str(tmp_path)).to_pyarrow_table().column("video_id").to_pylist()) == ["a", "b", "c"]
    assert not (tmp_path / MARKERS).exists()
    # a crash between the part and its commit: the part is there, in no commit
    (tmp_path / "part-zz-00000.parquet").write_bytes(b"PAR1 half")
    assert sorted(read_column(str(tmp_path), "video_id")) == ["a", "b", "c"]
    assert sorted(DeltaTable(str(tmp_path)).to_pyarrow_table().column("video_id").to_pylist()) == ["a", "b", "c"]
    assert remove_uncommitted(str(tmp_path)) == 1
    assert not (tmp_path / "part-zz-00000.parquet").exists()
    assert len(part_files(str(tmp_path))) == 2


def test_folders_written_before_markers_and_plain_parquet_folders_still_read(tmp_path):
    import pyarrow.parquet as pq

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    pq.write_table(pa.Table.from_pylist(_rows("a"), schema=ERROR_SCHEMA), legacy / "part-old-00000.parquet")
    assert read_column(str(legacy), "video_id") == ["a"]
    assert remove_uncommitted(str(legacy)) == 0                    # never deletes an unmarked legacy folder
    plain = tmp_path / "plain" / "year=2026"
    plain.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_rows("b"), schema=ERROR_SCHEMA), plain / "data.parquet")
    assert [os.path.basename(f) for f in dataset_files(str(tmp_path / "plain"))] == ["data.parquet"]
    with pytest.raises(Exception, match="feature set not found"):
        dataset_files(str(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def s3():
    with s3_server("bkt") as client:
        yield client


def test_uris_globs_and_whole_object_writes_on_s3(s3):
    for key in ("a/x.mp4", "a/b/y.mp4", "a/b/c/z.MP4", "a/notes.txt"):
        s3.put_object(Bucket="bkt", Key=key, Body=b"v")
    assert storage.isdir("s3://bkt/a") and storage.isfile("s3://bkt/a/x.mp4") and not storage.exists("s3://bkt/q")
    assert storage.glob("s3://bkt/a/*.mp4") == ["s3://bkt/a/x.mp4"]
    assert storage.glob("s3://bkt/a/**/*.mp4") == ["s3://bkt/a/b/y.mp4", "s3://bkt/a/x.mp4"]
    from vadclip.video.decode import list_videos

    assert list_videos("s3://bkt/a") == ["s3://bkt/a/b/c/z.MP4", "s3://bkt/a/b/y.mp4", "s3://bkt/a/x.mp4"]
    storage.write_text("s3://bkt/out/s.json", '{"ok": 1}')
    assert storage.read_text("s3://bkt/out/s.json") == '{"ok": 1}'
    assert storage.join("s3://bkt/out/", "features", "p.parquet") == "s3://bkt/out/features/p.parquet"
    assert storage.dirname("s3://bkt/out/s.json") == "s3://bkt/out"


def test_an_archives_folders_are_listed_side_by_side_and_say_the_same(s3, monkeypatch):
    """Issue #45: an object store's pages of one listing come one after another, so an archive
    in camera folders is listed a folder at a time, several at once: one listing of its own
    level (delimited), then one of each folder, the same files with the same sizes and
    modification times as a single listing of everything (the proxy counts the requests)."""
    from faultproxy import fault_proxy

    keys = ["arch/top.mp4"] + [f"arch/cam{c}/d{d}/h{h}.mp4" for c in range(3) for d in range(2) for h in range(2)]
    for k in keys:
        s3.put_object(Bucket="bkt", Key=k, Body=k.encode())
    with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {}) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        got = storage.listed_files("s3://bkt/arch")
        lists = [q for m, q in proxy.seen if m == "GET" and "list-type=2" in q]
    fs, p = storage.resolve("s3://bkt/arch")
    flat = fs.get_file_info(storage.pafs.FileSelector(p, recursive=True))
    want = {f"s3://{i.path}": (i.size, i.mtime) for i in flat if i.type == storage.pafs.FileType.File}
    assert {k: (i.size, i.mtime) for k, i in got.items()} == want and len(want) == len(keys)
    assert sum("delimiter" in q and "prefix=arch%2F&" in q + "&" for q in lists) == 1, lists
    for c in range(3):     # each camera's folder by a listing of its own
        assert [q for q in lists if f"prefix=arch%2Fcam{c}%2F&" in q + "&"], lists


def test_scratch_copies_are_removed_and_store_failures_are_not_video_errors(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("VADCLIP_SCRATCH", str(tmp_path))
    s3.put_object(Bucket="bkt", Key="v/ok.mp4", Body=b"0123456789" * 1000)
    s3.put_object(Bucket="bkt", Key="v/empty.mp4", Body=b"")
    with fetched("s3://bkt/v/ok.mp4") as local:
        assert local.startswith(str(tmp_path)) and os.path.getsize(local) == 10000
    with pytest.raises(RuntimeError, match="boom"):
        with fetched("s3://bkt/v/ok.mp4"):
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []                                # removed, failure included
    with pytest.raises(VideoError, match="s3://bkt/v/missing.mp4: file not found"):
        with fetched("s3://bkt/v/missing.mp4"):
            pass
    with pytest.raises(VideoError, match="empty file"):
        with fetched("s3://bkt/v/empty.mp4"):
            pass
    # a store that cannot be reached is the environment's problem once the retries are
    # spent (EnvironmentProblem, exit 3), never a VideoError
    import socket

    from vadclip.errors import EnvironmentProblem

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("VADCLIP_STORAGE_RETRIES", "2")
    with pytest.raises(EnvironmentProblem, match="s3://bkt/v/ok.mp4: storage kept failing after 2 attempts") as exc:
        with fetched("s3://bkt/v/ok.mp4"):
            pass
    assert not isinstance(exc.value, VideoError)


def test_scratch_copies_of_dead_processes_are_swept(tmp_path):
    """A worker SIGKILLed mid-copy leaves its scratch copy; the next copy on the node
    removes it, and never a live process's."""
    import os
    import subprocess
    import sys

    from vadclip.io.storage import _sweep_dead_copies

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f"vadclip-{dead}-abc.mp4").write_bytes(b"x")
    (tmp_path / f"vadclip-{os.getpid()}-def.mp4").write_bytes(b"x")
    (tmp_path / f"vadclip-{os.getppid()}-ghi.mp4").write_bytes(b"x")
    (tmp_path / "clip-weights").mkdir()
    _sweep_dead_copies(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(["clip-weights", f"vadclip-{os.getpid()}-def.mp4",
                                                   f"vadclip-{os.getppid()}-ghi.mp4"])


def test_on_s3_a_superseded_writer_is_fenced_and_concurrent_writers_all_commit(s3):
    """On an S3-API server, the output's Delta log (conditional puts) takes the commits of
    eight writers of one run at once, every row once; a writer whose run was taken over
    (its driver gone) has its next commit refused, and its part is no row and goes at the
    next clean-up.  DuckDB-style plain readers (deltalake) see the same rows."""
    import threading

    from deltalake import DeltaTable

    from vadclip.io.delta import location
    from vadclip.io.parts import LeaseLost
    from vadclip.jobs.output import ResumableOutput

    rows, errs = "s3://bkt/fence/rows", "s3://bkt/fence/errors"
    old = ResumableOutput(rows, errs, ERROR_SCHEMA, ERROR_SCHEMA)
    old_run = old.start()
    token = old.tokens[rows]
    writers = [PartWriter(rows, ERROR_SCHEMA, 2, f"{old_run}-w{k}", None, token=token) for k in range(8)]
    failed = []

    def write(k):
        try:
            writers[k].add(_rows(*(f"w{k}-{i}" for i in range(4))))
            writers[k].flush()
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            failed.append(repr(e))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failed
    expected = sorted(f"w{k}-{i}" for k in range(8) for i in range(4))
    assert sorted(read_column(rows, "video_id")) == expected
    uri, opts = location(rows)
    assert sorted(DeltaTable(uri, storage_options=opts).to_pyarrow_table().column("video_id").to_pylist()) == expected
    old.release()                                   # its driver is gone (no proof of life); its writers live on
    new = ResumableOutput(rows, errs, ERROR_SCHEMA, ERROR_SCHEMA)
    new.start()
    assert new.tokens[rows] > token
    writers[0].add(_rows("late"))
    with pytest.raises(LeaseLost):
        writers[0].flush()
    assert sorted(new.ids("video_id")[0]) == expected
    assert remove_uncommitted(rows) == 1            # the refused part
    assert sorted(DeltaTable(uri, storage_options=opts).to_pyarrow_table().column("video_id").to_pylist()) == expected
    new.release()


def test_a_listings_milliseconds_and_a_heads_whole_seconds_are_one_file():
    """An object store's listing stamps milliseconds, its HEAD whole seconds (Last-Modified):
    the same object, unchanged; another size, or another second, is a changed file."""
    from vadclip.video.decode import same_identity

    s = 1_764_900_000
    assert same_identity(f"100:{s * 10**9}", f"100:{s * 10**9 + 123_000_000}")
    assert not same_identity(f"100:{s * 10**9}", f"101:{s * 10**9 + 123_000_000}")
    assert not same_identity(f"100:{s * 10**9}", f"100:{(s + 1) * 10**9 + 5_000_000}")
    assert not same_identity(f"100:{s * 10**9 + 1}", f"100:{s * 10**9 + 2}")       # a local file's own ns
    assert same_identity("100:", "100:") and not same_identity("100:", "200:")


def test_an_artifact_upload_the_store_keeps_throttling_is_the_environments_problem(s3, tmp_path):
    """MLflow's artifact client (boto3) gives up on a store that answers every PUT with
    503 SlowDown: what it raises is the environment's problem (one line, exit 3), not a
    traceback and not a bad input."""
    import boto3

    from faultproxy import fault_proxy
    from vadclip.errors import EnvironmentProblem, environment_cause

    f = tmp_path / "index.html"
    f.write_text("<html></html>")
    with fault_proxy(os.environ["AWS_ENDPOINT_URL"], {"PUT": 1.0}, seed=1) as proxy:
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=proxy.url, config=Config(retries={"max_attempts": 2,
                                                                                    "mode": "standard"}))
        with pytest.raises(Exception) as got:
            client.upload_file(str(f), "bkt", "mlartifacts/report/index.html")
    assert type(got.value).__name__ == "S3UploadFailedError" and proxy.counts.get("PUT 503", 0) >= 2
    cause = environment_cause(got.value)
    assert isinstance(cause, EnvironmentProblem) and "storage kept failing" in str(cause)
    assert environment_cause(ValueError("503 in a video's name")) is None
