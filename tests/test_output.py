"""The pieces the jobs' workers write with: claims that keep one row per video across
write tasks (and let a retried task have its own rows back), and part writers that
split what they are given into parts of at most rows_per_file rows."""
import pyarrow as pa
import pyarrow.parquet as pq

from vadclip.io.parts import PartWriter, part_files
from vadclip.jobs.output import Claims, ResumableOutput, shard_of


def test_claims_hand_out_each_video_once_and_a_retry_gets_its_own_back():
    c = Claims()
    assert c.claim(["a", "b"], 1) == [True, True]
    assert c.claim(["a", "c"], 2) == [False, True]       # "a" is task 1's: a duplicate elsewhere
    assert c.claim(["b", "a"], 1) == [True, True]        # task 1 retried after dying: nothing lost
    assert Claims(["done"]).claim(["done"], 3) == [False]


def test_part_writer_splits_a_large_add_and_resumable_output_reads_it_back(tmp_path):
    schema = pa.schema([("video_id", pa.string()), ("path", pa.string())])
    out = ResumableOutput(str(tmp_path / "rows"), str(tmp_path / "errors"))
    rows, errors = out.writers("run1", schema, schema, rows_per_file=4, flush_seconds=None)
    rows.add([{"video_id": f"v{i}", "path": f"v{i}.mp4"} for i in range(10)])
    rows.flush()
    files = part_files(str(tmp_path / "rows"))
    assert [pq.read_metadata(f).num_rows for f in files] == [4, 4, 2]
    done, failed = out.ids()
    assert done == {f"v{i}" for i in range(10)} and failed == set()
    # an uncommitted part (a crash before its marker) is removed when the next run starts
    (tmp_path / "rows" / "part-run2-00000.parquet").write_bytes(b"half")
    out.start()
    assert not (tmp_path / "rows" / "part-run2-00000.parquet").exists()
    assert len(part_files(str(tmp_path / "rows"))) == 3


def test_every_video_has_one_writer_whatever_the_process():
    owners = {shard_of(f"cam{i}", 4) for i in range(200)}
    assert owners == {0, 1, 2, 3}
    assert shard_of("cam7", 4) == shard_of("cam7", 4)


def test_a_later_run_takes_the_lease_and_the_earlier_runs_writers_stop(tmp_path):
    """A writer that outlived its driver (the zombie window after a killed driver) must
    not commit rows the new run writes too: the new run takes the output's lease and
    the old writer's next commit fails without writing a part."""
    import pytest

    from vadclip.io.parts import LeaseLost

    schema = pa.schema([("video_id", pa.string()), ("path", pa.string())])
    old = ResumableOutput(str(tmp_path / "rows"), str(tmp_path / "errors"))
    old_run = old.start()
    ow, _ = old.writers(old_run, schema, schema, rows_per_file=10, flush_seconds=None)
    ow.add([{"video_id": "v1", "path": "/v1.mp4"}])
    ow.flush()                                          # holds the lease: committed
    new = ResumableOutput(str(tmp_path / "rows"), str(tmp_path / "errors"))
    new_run = new.start()
    assert new_run != old_run
    ow.add([{"video_id": "v2", "path": "/v2.mp4"}])
    with pytest.raises(LeaseLost, match=new_run):
        ow.flush()
    nw, _ = new.writers(new_run, schema, schema, rows_per_file=10, flush_seconds=None)
    nw.add([{"video_id": "v2", "path": "/v2.mp4"}])
    nw.flush()
    done, _ = new.ids("video_id")
    assert sorted(done) == ["v1", "v2"] and len(part_files(str(tmp_path / "rows"))) == 2
