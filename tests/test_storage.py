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
    assert sorted(os.listdir(tmp_path / MARKERS)) == sorted(os.path.basename(p) for p in part_files(str(tmp_path)))
    # a crash between the part and its marker: the part is there, unmarked
    (tmp_path / "part-zz-00000.parquet").write_bytes(b"PAR1 half")
    assert sorted(read_column(str(tmp_path), "video_id")) == ["a", "b", "c"]
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


def test_on_s3s_whole_second_stamps_a_commit_in_the_leases_second_counts_and_is_seen(s3):
    """S3 stamps objects with whole seconds, so a killed driver's last commit and the
    next run's lease often carry the same time.  That commit counts (it was there before
    the lease) and the next run, which reads the folder only once the store's clock has
    passed its lease, sees it: never removed, never written twice.  A commit made after
    the lease is fenced."""
    import time

    from vadclip.io.parts import lease_history
    from vadclip.jobs.output import ResumableOutput

    rows, errs = "s3://bkt/fence/rows", "s3://bkt/fence/errors"
    old = ResumableOutput(rows, errs)
    old_run = old.start()
    w = _writer(rows, old_run)
    while time.time() % 1 > 0.2:                   # early in a second: commit and lease share it
        time.sleep(0.02)
    w.add(_rows("v1"))
    w.flush()
    old.release()                                   # its driver is gone (no proof of life); its writer lives on
    new = ResumableOutput(rows, errs)
    new_run = new.start()
    (marker,) = storage.list_infos(f"{rows}/{MARKERS}")
    lease_at = [at for _, r, at in lease_history(rows) if r == new_run][0]
    assert marker.mtime_ns % 10**9 == 0 and lease_at % 10**9 == 0   # whole seconds, as S3 keeps them
    assert marker.mtime_ns <= lease_at
    done, _ = new.ids("video_id")
    assert done == {"v1"} and remove_uncommitted(rows) == 0
    w.add(_rows("v2"))                              # the old run's writer, after the new lease
    w.flush()
    done, _ = new.ids("video_id")
    assert done == {"v1"} and remove_uncommitted(rows) == 1
    assert not [i for i in storage.list_infos(f"{rows}/_leases") if "probe" in i.path]
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
