"""The pieces the jobs' workers write with: claims that keep one row per video across
write tasks (and let a retried task have its own rows back), and part writers that
split what they are given into parts of at most rows_per_file rows."""
import os

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from vadclip.io.parts import PartWriter, part_files
from vadclip.jobs.output import Claims, ResumableOutput, shard_of


def test_claims_hand_out_each_video_once_and_a_retry_gets_its_own_back():
    c = Claims()
    assert c.claim(["a", "b"], 1) == [True, True]
    assert c.claim(["a", "c"], 2) == [False, True]       # "a" is task 1's: a duplicate elsewhere
    assert c.claim(["b", "a"], 1) == [True, True]        # task 1 retried after dying: nothing lost
    assert Claims(["done"]).claim(["done"], 3) == [False]


def test_a_restartable_helper_ends_for_good_by_itself_and_one_that_hangs_is_killed(ray_local):
    """The writers and the claims actor restart without limit while the job runs; at its
    end each exits itself (no KillActor RPC: Ray 2.60's GCS logs its reply racing the
    exit as 'Failed to kill actor' on the job's stderr) and stays dead; one that does
    not answer its close in time is killed."""
    import time

    import ray
    from ray.exceptions import RayActorError

    from vadclip.jobs.output import Closable, end_actors

    class Busy(Closable):
        def wait(self, s):
            time.sleep(s)
            return s

    opts = dict(num_cpus=0, max_restarts=-1, max_task_retries=-1)
    a = ray.remote(Claims).options(**opts).remote(["x"])
    assert ray.get(a.claim.remote(["x", "y"], 1)) == [False, True]
    busy = ray.remote(Busy).options(**opts).remote()
    assert ray.get(busy.wait.remote(0)) == 0
    busy.wait.options(max_task_retries=0).remote(120)   # its close waits behind this call (not retried once killed)
    t0 = time.time()
    end_actors([a, busy], timeout=5.0)
    assert time.time() - t0 < 60
    for call in (lambda: a.claim.remote(["z"], 2), lambda: busy.wait.remote(0)):
        with pytest.raises(RayActorError):  # not restarted: gone for good
            ray.get(call(), timeout=60)


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


def test_the_done_set_stays_on_the_driver_as_arrow_and_never_travels_to_a_writer(tmp_path):
    """What identities() read of the folder (as large as the archive) is held as Arrow per
    part, and a ResumableOutput pickled for a writer actor (and again at each of its
    restarts) carries none of it (issue #45)."""
    import pickle

    schema = pa.schema([("video_id", pa.string()), ("path", pa.string())])
    out = ResumableOutput(str(tmp_path / "rows"), str(tmp_path / "errors"))
    rows, _ = out.writers("run1", schema, schema, rows_per_file=1000, flush_seconds=None, identities=True)
    rows.add([{"video_id": f"v{i}", "path": f"/archive/cam{i % 7}/v{i}.mp4", "input_identity": f"{i}:{i * 3}"}
              for i in range(5000)])
    rows.flush()
    small = len(pickle.dumps(out))
    done, failed = out.identities()
    assert isinstance(done, pa.Table) and isinstance(failed, pa.Table)     # columns, not a dict of 5,000
    held = dict(zip(done["path"].to_pylist(), done["identity"].to_pylist()))
    assert done.num_rows == 5000 and held["/archive/cam3/v10.mp4"] == "10:30" and failed.num_rows == 0
    named = out.named()
    assert dict(zip(named["path"].to_pylist(), named["video_id"].to_pylist()))["/archive/cam3/v10.mp4"] == "v10"
    assert all(isinstance(t, pa.Table) for t in out._seen["rows"].values())
    shipped = pickle.dumps(out)
    assert len(shipped) <= small + 64          # the writer's copy holds nothing of the 5,000 rows
    again = pickle.loads(shipped)
    assert again.named().num_rows == 0 and again.rows_dir == out.rows_dir


def test_identities_are_a_column_and_a_folder_that_kept_them_in_part_metadata_still_reads(tmp_path):
    """Parts keep each row's input identity in an ``input_identity`` column; a folder
    written before 2026-12-07 kept them as JSON in each part's schema metadata.  A nightly
    run over such a folder, now with parts of both kinds, knows every video's identity
    (none is taken for changed or new), and a part written now carries no identity JSON
    in its footer (issue #45: 19 KB a part, read on every run)."""
    import json

    from vadclip.io.parts import IDENTITY_KEY, write_part

    schema = pa.schema([("video_id", pa.string()), ("path", pa.string())])
    rows_dir = str(tmp_path / "rows")
    old = pa.table({"video_id": ["a", "b"], "path": ["/cam/a.mp4", "/cam/b.mp4"]}, schema=schema)
    old = old.replace_schema_metadata({IDENTITY_KEY: json.dumps({"/cam/a.mp4": "10:1", "/cam/b.mp4": None}).encode()})
    write_part(rows_dir, "part-old-00000.parquet", old)
    out = ResumableOutput(rows_dir, str(tmp_path / "errors"))
    rows, _ = out.writers("run2", schema, schema, rows_per_file=10, flush_seconds=None, identities=True)
    rows.add([{"video_id": "c", "path": "/cam/c.mp4", "input_identity": "30:3"},
              {"video_id": "d", "path": "/cam/d.mp4", "input_identity": ""}])
    rows.flush()
    new_part = [f for f in part_files(rows_dir) if "run2" in f][0]
    footer = pq.read_schema(new_part)
    assert "input_identity" in footer.names and IDENTITY_KEY not in (footer.metadata or {})
    done, _ = out.identities()
    held = dict(zip(done["path"].to_pylist(), done["identity"].to_pylist()))
    # an empty identity (the input could not be looked at) is none, as it was in the metadata
    assert held == {"/cam/a.mp4": "10:1", "/cam/b.mp4": None, "/cam/c.mp4": "30:3", "/cam/d.mp4": None}


def test_every_video_has_one_writer_whatever_the_process():
    owners = {shard_of(f"cam{i}", 4) for i in range(200)}
    assert owners == {0, 1, 2, 3}
    assert shard_of("cam7", 4) == shard_of("cam7", 4)


def test_a_later_run_fences_the_earlier_runs_commits_and_its_writers_stop(tmp_path):
    """A writer that outlived its driver (the zombie window after a killed driver) must
    not add rows the new run writes too.  Its lease check before a part may not be due,
    but its commit carries its lease token and the Delta log refuses it once the new
    run's token is there; the part it wrote is no row, and the next run removes it."""
    import os

    import pytest

    from vadclip.io.delta import lease_token
    from vadclip.io.parts import LeaseGuard, LeaseLost, PartWriter, remove_uncommitted

    schema = pa.schema([("video_id", pa.string()), ("path", pa.string())])
    rows_dir = str(tmp_path / "rows")
    old = ResumableOutput(rows_dir, str(tmp_path / "errors"))
    old_run = old.start()
    t = [0.0]
    mine = old.tokens[rows_dir]
    ow = PartWriter(rows_dir, schema, 10, old_run, None, guard=LeaseGuard(rows_dir, mine, every=15,
                                                                          clock=lambda: t[0]), token=mine)
    ow.add([{"video_id": "v1", "path": "/v1.mp4"}])
    ow.flush()                                          # holds the lease: committed
    old.release()                                       # its driver is gone (no proof of life); its writer lives on
    new = ResumableOutput(rows_dir, str(tmp_path / "errors"))
    new_run = new.start()
    assert new_run != old_run and lease_token(rows_dir) == new.tokens[rows_dir] > mine
    t[0] = 5.0                                          # the old writer's check is not due yet ...
    ow.add([{"video_id": "v2", "path": "/v2.mp4"}])
    with pytest.raises(LeaseLost, match="a later run"):
        ow.flush()                                      # ... but its commit is refused
    assert ow.buf and ow.buf[0]["video_id"] == "v2"     # a refused commit keeps its rows
    done, _ = new.ids("video_id")
    assert sorted(done) == ["v1"]
    assert len([n for n in os.listdir(rows_dir) if n.startswith("part-")]) == 2   # the refused part: no row
    t[0] = 20.0
    ow.add([{"video_id": "v3", "path": "/v3.mp4"}])
    with pytest.raises(LeaseLost, match="a later run"):
        ow.flush()                                      # the check before writing: no part written at all
    assert len([n for n in os.listdir(rows_dir) if n.startswith("part-")]) == 2
    nw, _ = new.writers(new_run, schema, schema, rows_per_file=10, flush_seconds=None)
    nw.add([{"video_id": "v2", "path": "/v2.mp4"}])
    nw.flush()
    done, _ = new.ids("video_id")
    assert sorted(done) == ["v1", "v2"] and len(part_files(rows_dir)) == 2
    assert remove_uncommitted(rows_dir) == 1            # the fenced part goes
    new.release()


def test_a_failed_commit_keeps_every_row_for_the_next_flush(tmp_path):
    """Rows leave a writer's buffer only once their part and marker are committed."""
    import pytest

    from vadclip.io.parts import PartWriter

    schema = pa.schema([("video_id", pa.string()), ("path", pa.string())])
    fail = [True]

    def guard():
        if fail[0]:
            raise OSError("When uploading part: AWS Error SLOW_DOWN (HTTP status 503)")

    committed = []
    w = PartWriter(str(tmp_path), schema, 2, "run1", None, guard=guard, on_commit=committed.extend)
    with pytest.raises(OSError):
        w.add([{"video_id": f"v{i}", "path": f"/v{i}"} for i in range(3)])
    assert [r["video_id"] for r in w.buf] == ["v0", "v1", "v2"] and not committed
    fail[0] = False
    w.flush()
    assert not w.buf and [r["video_id"] for r in committed] == ["v0", "v1", "v2"]
    assert [pq.read_metadata(f).num_rows for f in part_files(str(tmp_path))] == [2, 1]


def test_storage_retries_transient_errors_and_then_names_the_environment(monkeypatch):
    import pytest

    from vadclip.errors import EnvironmentProblem
    from vadclip.io import storage

    monkeypatch.setenv("VADCLIP_STORAGE_RETRIES", "4")
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate.")
        return "ok"

    assert storage.retrying(flaky, "s3://b/k") == "ok" and len(calls) == 3
    with pytest.raises(EnvironmentProblem, match="s3://b/k: storage kept failing after 4 attempts"):
        storage.retrying(lambda: (_ for _ in ()).throw(ConnectionResetError("reset by peer")), "s3://b/k")
    with pytest.raises(FileNotFoundError):           # a missing key is never retried
        storage.retrying(lambda: (_ for _ in ()).throw(FileNotFoundError("s3://b/k")), "s3://b/k")


def test_a_refused_run_changes_nothing_in_the_folder_and_the_live_run_keeps_its_lease(ray_local, sample_videos,
                                                                                       tmp_path):
    """Every check that can refuse a run comes before the lease: a second extraction
    into the same folder with other settings (a mistake) stops in one line, and the
    folder — its lease, its parts, an uncommitted part the live run is writing — is as
    it was, so the live run's next commits still count."""
    import os

    import pytest

    from vadclip.clip.spec import ClipSpec
    from vadclip.io.delta import lease_token
    from vadclip.io.parts import LEASES, lease_holder
    from vadclip.io.provenance import ProvenanceError
    from vadclip.jobs.extract import ExtractOptions, run_extract

    out = tmp_path / "out"
    run_extract(sample_videos["manifest"], str(out), ExtractOptions(clip=ClipSpec.tiny(), precision="fp32"),
                log=lambda *_: None)
    feats = out / "features"
    live = lease_holder(str(feats))
    (feats / f"part-{live}-w000-abcd-00099.parquet").write_bytes(b"being written by the live run")

    def snapshot():
        return sorted((os.path.relpath(os.path.join(d, f), out), os.stat(os.path.join(d, f)).st_mtime_ns)
                      for d, _, fs in os.walk(out) for f in fs)

    before, token = snapshot(), lease_token(str(feats))
    with pytest.raises(ProvenanceError, match="holds features of other settings"):
        run_extract(sample_videos["manifest"], str(out), ExtractOptions(clip=ClipSpec.tiny(), precision="bf16"),
                    log=lambda *_: None)
    assert snapshot() == before
    assert lease_token(str(feats)) == token             # the live run still holds it
    assert len(os.listdir(feats / LEASES)) == 1


def test_credentials_never_reach_a_runtime_env_unless_asked_and_uris_are_redacted(monkeypatch):
    from vadclip.io.storage import redact
    from vadclip.jobs import cluster

    for k, v in {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "eu-west-1",
                 "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
                 "AWS_SESSION_TOKEN": "tok-value", "AZURE_STORAGE_ACCOUNT_KEY": "azkey-value",
                 "GOOGLE_APPLICATION_CREDENTIALS": "/home/me/key.json", "VADCLIP_SCRATCH": "/scratch"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv(cluster.FORWARD_CREDENTIALS, raising=False)
    env = cluster._forwarded_env()["env_vars"]
    assert {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "eu-west-1",
            "VADCLIP_SCRATCH": "/scratch"}.items() <= env.items()
    text = repr(env)
    assert not any(s in text for s in ("AKIDEXAMPLE", "s3cr3t-value", "tok-value", "azkey-value", "key.json"))
    monkeypatch.setenv(cluster.FORWARD_CREDENTIALS, "1")
    assert cluster._forwarded_env()["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value"
    assert redact("postgresql://vad:pa55w0rd@db:5432/mlflow") == "postgresql://vad:***@db:5432/mlflow"
    assert redact("s3://bucket/key") == "s3://bucket/key" and redact(3) == 3


def test_a_tracking_servers_password_goes_to_mlflows_variables_and_back_only_for_a_rank(monkeypatch):
    from vadclip.tracking.runs import resolve_tracking_uri, with_credentials

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    bare = resolve_tracking_uri("https://vad:p%40ss@mlflow.example:5000/prefix")
    assert bare == "https://mlflow.example:5000/prefix"          # what MLflow is given, and prints
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "vad" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    full = with_credentials(bare)                                # handed to a rank through Ray's object store
    assert full == "https://vad:p%40ss@mlflow.example:5000/prefix"
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert resolve_tracking_uri(full) == bare and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    # a database URI keeps its password: SQLAlchemy needs it, and MLflow prints no URL for it
    assert resolve_tracking_uri("postgresql://vad:pw@db/mlflow") == "postgresql://vad:pw@db/mlflow"
    assert with_credentials(None) is None


def test_a_part_never_holds_half_a_video(tmp_path):
    """A video's crop rows come as one unit: a part holds whole videos (rows_per_file a bound
    on the rest), so a commit is a set of whole videos and a crash never leaves half of one."""
    from collections import Counter

    from vadclip.io.parts import PartWriter

    schema = pa.schema([("video_id", pa.string()), ("crop", pa.int64())])
    w = PartWriter(str(tmp_path / "rows"), schema, 4, "r1", None)
    for v in range(5):
        w.add([{"video_id": f"v{v}", "crop": c} for c in range(10)], whole=True)
    w.add([{"video_id": f"s{i}", "crop": 0} for i in range(6)])        # single rows: 4 a part
    w.flush()
    parts = [pq.read_table(f).column("video_id").to_pylist() for f in part_files(str(tmp_path / "rows"))]
    assert [Counter(p) for p in parts if p[0].startswith("v")] == [Counter({f"v{v}": 10}) for v in range(5)]
    assert sorted(len(p) for p in parts if p[0].startswith("s")) == [2, 4]


def test_scoring_features_reads_only_the_parts_holding_what_is_left(tmp_path):
    """Issue #45: a nightly `score --features` skips the feature parts whose videos are all
    scored (their video_id column says so) instead of reading every feature byte."""
    from vadclip.jobs.score import _files_to_score

    files = []
    for i, ids in enumerate((["a", "b"], ["c", "d"], ["e"])):
        f = str(tmp_path / f"part-{i}.parquet")
        pq.write_table(pa.table({"video_id": ids, "crop": [0] * len(ids)}), f)
        files.append(f)
    assert _files_to_score(files, None, {"a", "b", "c"})[0] == files[1:]
    assert _files_to_score(files, ["e"], set())[0] == files[2:]
    assert _files_to_score(files, None, set())[0] == files
    assert _files_to_score(files, None, {"a", "b", "c", "d", "e"})[0] == []


def test_a_plan_reads_each_part_once_and_sees_what_it_rewrites(tmp_path, monkeypatch):
    """Inside read_once, a committed part is opened once for its footer and small columns;
    a part this process rewrites (update_rows, drop_rows) is read anew; another column
    (the features) is still read from the file; outside, every read goes to the file."""
    from vadclip.io import parts
    from vadclip.io.parts import PartWriter, drop_rows, read_file, read_once, read_schema, update_rows

    schema = pa.schema([("video_id", pa.string()), ("path", pa.string()), ("meta", pa.string()),
                        ("features", pa.list_(pa.float32()))])
    w = PartWriter(str(tmp_path), schema, 3, "r1", flush_seconds=None)
    w.add([{"video_id": f"v{i}", "path": f"/a/v{i}.mp4", "meta": "", "features": [float(i)] * 4}
           for i in range(3)])
    (f,) = part_files(str(tmp_path))
    opened = []
    real = parts.storage.resolve

    def counting(path):
        fs, p = real(path)
        if p.endswith(".parquet"):
            opened.append(p)
        return fs, p

    monkeypatch.setattr(parts.storage, "resolve", counting)
    with read_once():
        assert read_schema(f).names == schema.names
        assert read_file(f, ["path"]).column("path").to_pylist() == [f"/a/v{i}.mp4" for i in range(3)]
        assert read_file(f, ["video_id", "meta"]).num_rows == 3
        assert len(opened) == 1                 # footer, path, video_id and meta: one open
        assert read_file(f, ["features"]).column("features").to_pylist()[2] == [2.0] * 4
        assert len(opened) == 2                 # a large column: from the file
        update_rows(str(tmp_path), "path", {"/a/v1.mp4": {"meta": '{"camera": "c2"}'}})
        (f2,) = part_files(str(tmp_path))       # the part replaced, in one commit
        assert f2 != f and read_file(f2, ["meta"]).column("meta").to_pylist()[1] == '{"camera": "c2"}'
        drop_rows(str(tmp_path), "video_id", {"v0"})
        (f,) = part_files(str(tmp_path))
        assert read_file(f, ["video_id"]).column("video_id").to_pylist() == ["v1", "v2"]
    n = len(opened)
    read_file(f, ["path"]), read_file(f, ["path"])
    assert len(opened) == n + 2                 # outside: each read opens the file


def _replace_one(out, i, schema, start):
    """One writer of the test below: video ``i``'s new row, taking its old row out (a process
    of its own, as a writer actor is, or a thread), once every writer is ready (``start``)."""
    w = out.writers(f"run1-w{i:03d}", schema, schema, 10, None)[0]
    start.wait(120)
    w.add([{"path": f"/v{i}", "video_id": f"v{i}", "gen": 1}], whole=True)
    w.flush()


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_rewritten_videos_replaced_by_concurrent_writers_in_one_commit_each(tmp_path, how):
    """Six videos in one committed part, four of them rewritten: four writers (threads of one
    process, or processes as writer actors are) each commit a new row that takes its video's
    old row out of that part in the same commit.  (Threads of one process share its table
    object: a look by one moved it to a newer version under another's commit, whose removes,
    prepared from the older one, then passed: 2 of 8 runs under load brought old rows back
    and twice, before each commit held its table.) Their commits race on the one old part; delta-rs refuses the
    losers and they rewrite the part again from the table's new version. At every version a
    reader saw each video once, and the two videos nobody rewrote kept their rows."""
    import threading

    import table_history
    from vadclip.io.parts import part_base, read_table, take_lease

    d = str(tmp_path / "rows")
    schema = pa.schema([("path", pa.string()), ("video_id", pa.string()), ("gen", pa.int64())])
    token = take_lease(d, "r0", schema)
    out = ResumableOutput(d, str(tmp_path / "errors"), schema, schema, tokens={d: token})
    w0 = PartWriter(d, schema, 100, "run0", None, token=token)
    w0.add([{"path": f"/v{i}", "video_id": f"v{i}", "gen": 0} for i in range(6)])
    w0.flush()
    before = table_history.version(d)
    rewritten = {f"/v{i}" for i in range(4)}
    assert out.replace_later(d, rewritten) == rewritten
    (bases,) = {tuple(b) for b in out.replaces[d].values()}
    assert [part_base(os.path.basename(f)) for f in part_files(d)] == list(bases)

    errors = []
    if how == "processes":
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        start = ctx.Barrier(4)
        procs = [ctx.Process(target=_replace_one, args=(out, i, schema, start)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        errors = [p.exitcode for p in procs if p.exitcode != 0]
    else:
        start = threading.Barrier(4)

        def write(i):
            try:
                _replace_one(out, i, schema, start)
            except BaseException as e:      # noqa: BLE001 - raised below, in the test's thread
                errors.append(e)
        threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    rows = sorted((r["path"], r["gen"]) for r in read_table(d).to_pylist())
    assert rows == [(f"/v{i}", 1 if i < 4 else 0) for i in range(6)]
    assert out.finish_replacing() == 0          # every old row went with its new one
    history = table_history.rows_per_path(d, before)
    assert len(history) >= 5 and all(h == {f"/v{i}": 1 for i in range(6)} for h in history)
