"""Output tables as Parquet part files committed to a Delta Lake log, resumable on local
disk and in object storage.

A job writes its rows in parts named ``part-<run id>-<n>.parquet`` (unique per run, so
two runs never write the same name) and, once a part is whole, commits it to the
folder's Delta log (:mod:`vadclip.io.delta`): one transaction per part, which holds
whole videos only (every crop row; a long recording's segments go in with its last
part).  A part counts as done only once its commit is in the log: a crash while a part
is being written (or uploaded) leaves a file that no reader sees (vadclip's, DuckDB's,
Polars', Spark's) and that the next run deletes, so resuming never counts a
half-written part and never duplicates or loses a row.  Rewriting rows (a video to
score again, a corrected manifest) removes the old part and adds its replacement in
one commit.  Folders written before the Delta log (parts with ``_committed/<part>``
markers, or, on local disk, parts alone) are read as they are, and taken into a Delta
log by the first run that writes them."""
from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import time
import uuid
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vadclip.io import delta, storage
from vadclip.errors import EnvironmentProblem, InputError, MissingInputError

log = logging.getLogger(__name__)

MARKERS = "_committed"


def new_run_id() -> str:
    """A unique, time-ordered stamp for the part names of one job run."""
    return time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def table_bytes(table: pa.Table) -> bytes:
    """A part's Parquet bytes.  Dictionary encoding only for the flat columns: a list of
    floats (a row's features, a score curve) is near-unique values, for which the dictionary
    encoder hashes the whole column chunk before it gives up — measured on one hour's
    feature row (5,625 × 512 floats): 383 MB of peak memory and 1.06 s against 68 MB and
    0.03 s, and a file of 17 MB against 10 MB."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, use_dictionary=[f.name for f in table.schema if not pa.types.is_nested(f.type)])
    return sink.getvalue().to_pybytes()


class PartWriter:
    """Buffers rows and writes them as committed part files.

    A part is written once ``rows_per_file`` rows are buffered or, for a slow job,
    once the oldest buffered row has waited ``flush_seconds``: an interrupted job
    loses at most that much work, and the number of part files stays bounded by
    the job's duration / ``flush_seconds``.

    Rows leave the buffer only once their part and its marker are committed: a write
    that fails (storage that keeps answering 503 after the retries of
    :func:`vadclip.io.storage.retrying`, a lost lease) raises with every row still
    buffered, and the next flush writes them again under the same part name.
    ``on_commit(rows)`` is told of each committed part's rows."""
    def __init__(self, directory: str, schema: pa.Schema, rows_per_file: int, run_id: str,
                 flush_seconds: Optional[float] = 60.0, clock=time.monotonic, identities: bool = False,
                 guard=None, on_commit=None, token: Optional[int] = None,
                 replaces: Optional[Dict[str, List[str]]] = None) -> None:
        self.dir, self.schema, self.rows_per_file, self.run_id = directory, schema, rows_per_file, run_id
        self.guard = guard          # called before each part is written; raises when this run may no longer write
        self.token = token          # the run's lease: each commit carries it (see vadclip.io.delta)
        self.on_commit = on_commit
        # {path: bases of the parts holding its old rows}: a rewritten recording's, replaced by its new rows' commit
        self.replaces = dict(replaces or {})
        # rows carry "input_identity": a column of their parts (:func:`with_identities`)
        self.identities = identities
        self.flush_seconds, self.clock = flush_seconds, clock
        self.buf: List[Dict[str, Any]] = []
        self.units: List[int] = []  # the rows of buf as the units they came in (a video's crop rows: one)
        self.staged: List[List[str]] = []   # per unit: the staged parts its commit takes with it
        self.parts = 0
        self._oldest: Optional[float] = None
        storage.makedirs(directory)

    def add(self, rows: Iterable[Dict[str, Any]], whole: bool = False, staged: Sequence[str] = ()) -> None:
        """Buffer ``rows``; ``whole``: they are one video's (each crop's row) and go into one
        part, whatever ``rows_per_file`` says, so a part never holds half a video.
        ``staged``: that video's parts written before without a marker (a long
        recording's earlier segments), committed by this part's marker."""
        rows = list(rows)
        if not rows:
            self.tick()
            return
        if not self.buf:
            self._oldest = self.clock()
        self.buf.extend(rows)
        self.units.extend([len(rows)] if whole else [1] * len(rows))
        self.staged.extend([list(staged)] if whole else [[] for _ in rows])
        if len(self.buf) >= self.rows_per_file:
            self.flush()
        else:
            self.tick()

    def tick(self) -> None:
        """Flush if the oldest buffered row has waited ``flush_seconds`` (call it often)."""
        if self.buf and self.flush_seconds is not None and self.clock() - self._oldest >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, in parts of at most ``rows_per_file`` rows."""
        while self.buf:
            n = k = 0          # whole units, at least one, up to rows_per_file rows
            while k < len(self.units) and (k == 0 or n + self.units[k] <= self.rows_per_file):
                n += self.units[k]
                k += 1
            rows = self.buf[:n]
            name = f"part-{self.run_id}-{self.parts:05d}.parquet"
            table = pa.Table.from_pylist(rows, schema=with_identities(self.schema) if self.identities
                                         else self.schema)
            if self.guard is not None:
                self.guard()
            paths = {r.get("path") for r in rows} & self.replaces.keys()
            write_part(self.dir, name, table, staged=[n for st in self.staged[:k] for n in st], token=self.token,
                       replace=_replacing(self.replaces, paths))
            for p in paths:
                del self.replaces[p]
            # committed: only now do the rows leave the buffer
            self.parts += 1
            del self.buf[:len(rows)]
            del self.units[:k]
            del self.staged[:k]
            if self.on_commit is not None:
                self.on_commit(rows)
        self._oldest = None


def _replacing(replaces: Dict[str, List[str]], paths: Set[str]) -> Optional[Tuple[List[str], Set[str]]]:
    """``write_part``'s ``replace`` for the rows of ``paths`` (None: none replaces old rows)."""
    return (sorted({b for p in paths for b in replaces[p]}), set(paths)) if paths else None


def with_identities(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the identity of each row's input (``input_identity``: size:mtime, or
    the store's ETag) as a column (:func:`read_identities`).  Parts written before
    2026-12-07 kept it per path as JSON in their schema's metadata (:data:`IDENTITY_KEY`),
    which is still read: 19 KB in every part's footer, twice, parsed into Python objects
    on each nightly run."""
    if IDENTITY_COLUMN in schema.names:
        return schema
    return schema.append(pa.field(IDENTITY_COLUMN, pa.string()))


def write_part(directory: str, name: str, table: pa.Table, staged: Sequence[str] = (), commit: bool = True,
               token: Optional[int] = None, replace: Optional[Tuple[Sequence[str], Set[str]]] = None) -> str:
    """The part (one whole object), then its commit (:func:`vadclip.io.delta.commit`).
    ``staged``: parts written before without a commit (``commit=False``: a long
    recording's earlier segments) that this commit adds with it, so the whole recording
    counts in one step or not at all.  ``token``: the writing run's lease; a run that
    lost it raises :class:`LeaseLost` and commits nothing.  ``replace``: (part bases,
    paths): the rows of these paths in those parts (a rewritten recording's old rows) go
    in the same commit, their parts rewritten without them, so a reader sees the old
    rows or the new ones, never both and never none."""
    from vadclip.errors import storage_refused

    path = storage.join(directory, name)
    _forget(path)
    try:
        data = table_bytes(table)
        storage.write_bytes(path, data)
        if not commit:
            return path
        adds = [(n, storage.info(storage.join(directory, n)).size, None) for n in staged]
        delta.commit(directory, adds + [(name, len(data), table.num_rows)], table.schema, token=token,
                     what=f"commit of {name}", prepare=_without(directory, *replace) if replace else None)
    except delta.Superseded:
        raise LeaseLost(f"{directory}: a later run writes this output now; this run's writers stop "
                        "without committing") from None
    except Exception as e:      # a full disk, a read-only or forbidden folder: the environment's, named
        refused = storage_refused(e)    # (delta-rs raises its store's refusals as DeltaError, not OSError)
        if refused is None:
            raise
        raise EnvironmentProblem(f"{directory}: {refused}") from None
    return path


def _without(directory: str, bases: Sequence[str], paths: Set[str]):
    """For :func:`vadclip.io.delta.commit`: the current files of the parts first written as
    ``bases``, each rewritten without the rows of ``paths`` (adds, removes)."""
    bases = set(bases)

    def prepare(names: List[str]):
        adds, removes = [], []
        for n in names:
            if part_base(n) not in bases:
                continue
            f = storage.join(directory, n)
            t = read_file(f)
            keep = t.filter(pc.invert(pc.is_in(t.column("path"), pa.array(sorted(paths), pa.string()))))
            if keep.num_rows == t.num_rows:
                continue
            removes.append(n)
            if keep.num_rows:
                adds.append(_replacement(directory, n, keep))
        return adds, removes
    return prepare


# Within :func:`read_once` (a job's planning), each part is fetched once: its footer and
# its small columns in one open, every later read of them served from that.  Without it
# a nightly plan read each part up to a dozen times (a provenance check, identities,
# video ids, manifest corrections: each an open, so a HEAD and GETs per part).
SMALL_COLUMNS = ("path", "video_id", "label", "meta", "crop", "num_frames", "fps", "snippet_count",
                 "model_version", "rule", "flagged", "video_score", "stage", "error", "input_identity",
                 "snippet_start")
_ONCE: "contextvars.ContextVar[Optional[Dict[str, Any]]]" = contextvars.ContextVar("vadclip_parts_once", default=None)
ONCE_BYTES = 512 << 20      # past this much held, further parts are read as without it


@contextmanager
def read_once():
    """Read each part file at most once while inside (nested: the outer one counts).
    A part written or rewritten through this module meanwhile is read anew."""
    token = _ONCE.set({"parts": {}, "bytes": 0}) if _ONCE.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _ONCE.reset(token)


def _forget(path: str) -> None:
    held = _ONCE.get()
    if held is not None:
        held["parts"].pop(path, None)


def _held(path: str) -> Optional[Tuple[pa.Schema, Dict[str, Any]]]:
    """(schema, {column: array}) of ``path``: its footer and small columns, fetched in one
    open the first time; None outside :func:`read_once` or past :data:`ONCE_BYTES`."""
    held = _ONCE.get()
    if held is None:
        return None
    got = held["parts"].get(path)
    if got is None:
        if held["bytes"] > ONCE_BYTES:
            return None
        fs, p = storage.resolve(path)

        size = delta.size_of(path)

        def fetch():
            if size is not None:
                # the size from the table's log: the footer and the columns read without a request
                # to ask how large the file is (an object store's HEAD per part)
                frag = pads.ParquetFileFormat().make_fragment(p, filesystem=fs, file_size=size)
                return _small_columns(frag.physical_schema, frag.to_table)
            with fs.open_input_file(p) as fh:
                pf = pq.ParquetFile(fh)
                return _small_columns(pf.schema_arrow, pf.read)

        schema, t = storage.retrying(fetch, path)
        got = (schema, {c: t.column(c) for c in t.column_names} if t is not None else {})
        held["parts"][path] = got
        held["bytes"] += t.nbytes if t is not None else 0
    return got


def _small_columns(schema: pa.Schema, read) -> Tuple[pa.Schema, Optional[pa.Table]]:
    """(schema, the :data:`SMALL_COLUMNS` it has, read by ``read(columns=…)``)."""
    small = [c for c in SMALL_COLUMNS if c in schema.names]
    return schema, read(columns=small) if small else None


def read_file(path: str, columns: Optional[Sequence[str]] = None, filters=None) -> pa.Table:
    """One Parquet file (a path or URI), optionally some columns or rows."""
    if columns is not None and filters is None:
        got = _held(path)
        if got is not None and all(c in got[1] or c not in got[0].names for c in columns):
            schema, cols = got
            names = [c for c in columns if c in cols]
            return pa.Table.from_arrays([cols[c] for c in names],
                                        schema=pa.schema([schema.field(c) for c in names], metadata=schema.metadata))
    fs, p = storage.resolve(path)
    return storage.retrying(lambda: pq.read_table(p, columns=list(columns) if columns else None, filters=filters,
                                                  filesystem=fs), path)


def read_schema(path: str) -> pa.Schema:
    """One Parquet file's schema (its footer only)."""
    got = _held(path)
    if got is not None:
        return got[0]
    fs, p = storage.resolve(path)
    return storage.retrying(lambda: pq.read_schema(p, filesystem=fs), path)


def _listing(directory: str):
    """(part names, names of the parts whose commit counts) of ``directory``.  A commit
    counts when its marker exists and, for a run that later lost the output's lease,
    the storage server wrote the marker before the next run took the lease
    (:func:`take_lease`): the fencing that keeps a writer that outlived its driver
    from adding rows the next run also writes."""
    names = [storage.basename(f) for f in storage.list_files(directory, recursive=False)]
    if not any(_is_part(n) for n in names):
        return [], set()        # nothing to count (an empty or absent folder): no more listings
    markers = storage.list_infos(storage.join(directory, MARKERS))
    leases = lease_history(directory)
    counted = [i for i in markers if _fenced_at(storage.basename(i.path), leases, i.mtime_ns)]
    marked = {storage.basename(i.path) for i in counted}
    for i in counted:
        if i.size:          # a marker that commits staged parts with its own (a long recording's segments)
            marked.update(_staged_by(i.path, i.mtime_ns))
    return sorted(n for n in names if _is_part(n)), marked


_STAGED: Dict[Tuple[str, Optional[int]], List[str]] = {}    # a marker's body, read once: markers never change


def _staged_by(marker: str, mtime_ns: Optional[int] = None) -> List[str]:
    key = (marker, mtime_ns)
    if key not in _STAGED:
        _STAGED[key] = _read_staged(marker)
    return _STAGED[key]


def _read_staged(marker: str) -> List[str]:
    try:
        body = storage.read_bytes(marker)
    except FileNotFoundError:       # removed since the listing (a run cleaning up)
        return []
    try:
        names = json.loads(body or b"[]")
    except ValueError:
        return []
    return [n for n in names if isinstance(n, str) and _is_part(n)] if isinstance(names, list) else []


def part_files(directory: str) -> List[str]:
    """The committed part files of ``directory`` (none when it does not exist): the files
    of its Delta table's current version, or in a folder written before the Delta log,
    the parts whose commit markers count."""
    names = delta.files(directory)
    if names is not None:
        return [storage.join(directory, n) for n in names]
    parts, marked = _listing(directory)
    if _before_markers(directory, marked):
        marked = set(parts)   # written before commit markers: atomic renames, all whole
    return [storage.join(directory, n) for n in parts if n in marked]


def _before_markers(directory: str, marked) -> bool:
    """A local folder written before commit markers existed (no marker folder at all)."""
    return not marked and storage.is_local(directory) and not storage.exists(storage.join(directory, MARKERS))


# ------------------------------------------------------------------------- leases
# A run takes an output folder by committing its lease token to the folder's Delta log
# (an application transaction, :func:`vadclip.io.delta.take`): the token one more than
# the highest so far.  Every commit of the run's writers carries the token, and Delta's
# conflict check refuses one whose run was superseded (:mod:`vadclip.io.delta`): a writer
# that outlived its driver never commits after the next run took the folder.  Beside the
# log, ``_leases/<token>-<run id>`` names the run behind each token and when it took the
# folder, and ``_leases/alive-<run id>`` is its proof of life (:class:`Heartbeat`).
# Folders written before the Delta log fenced by the store's clock: a marker of run R
# counts only if the store stamped it no later than the first lease taken after R's
# (:func:`_fenced_at`); such a folder is read that way and taken into a Delta log by the
# first run that writes it.
LEASES = "_leases"
LEASE_CHECK_S = float(os.environ.get("VADCLIP_LEASE_CHECK_S", "15"))
_RUN_OF_PART = re.compile(r"^part-(\d{14}-[0-9a-f]{6})")


class LeaseLost(EnvironmentProblem):
    """Another run took the output over (this run's driver stopped being heard from, see
    :func:`live_holder`): this run's writers stop; the job fails in one line (exit 3) and
    its re-run resumes."""


class LeaseBusy(InputError):
    """A live run writes the output folder: this run changed nothing there and stops in one
    line (exit 2) naming it, or waits for it (``--wait``)."""


# A run's driver says it is alive by rewriting ``_leases/alive-<run id>`` (its host and
# process id) every HEARTBEAT_S seconds (a daemon thread, :class:`Heartbeat`); it removes
# the object when the run ends.  A run is gone — and its lease taken over — when the store
# stamped that object more than STALE_AFTER heartbeats ago (by the store's own clock: a
# driver whose node was lost), or at once when its process no longer exists on this host (a
# driver SIGKILLed, re-run here); a live one is never fenced.  The heartbeat is an object of its own: rewriting the
# lease object would move the time that fences the runs before it.
HEARTBEAT_S = float(os.environ.get("VADCLIP_LEASE_HEARTBEAT_S", "10"))
STALE_AFTER = 3


def lease_history(directory: str) -> List[Tuple[int, str, int]]:
    """``[(token, run id, server time in ns)]`` of the runs that took ``directory``, oldest first."""
    out = []
    for i in storage.list_infos(storage.join(directory, LEASES)):
        token, _, run = storage.basename(i.path).partition("-")
        if token.isdigit() and run:
            out.append((int(token), run, i.mtime_ns or 0))
    return sorted(out)


def _fenced_at(marker: str, leases: List[Tuple[int, str, int]], mtime_ns: Optional[int]) -> bool:
    """Whether the commit marker ``marker`` (written at ``mtime_ns``) counts."""
    m = _RUN_OF_PART.match(marker)
    if not m or not leases:
        return True
    run = m.group(1)
    mine = [t for t, r, _ in leases if r == run]
    if not mine:
        return True          # a run that never took a lease (written before leases existed)
    later = [at for t, r, at in leases if t > mine[0]]
    # a marker stamped with the lease's own time counts: stores keep whole seconds (S3)
    # or clock ticks, and :func:`take_lease` returns only once the store's clock has moved
    # past the lease, so the new run reads every marker that counts before it decides
    return not later or mtime_ns is None or mtime_ns <= min(later)


def take_lease(directory: str, run_id: str, schema: Optional[pa.Schema] = None) -> int:
    """The output folder ``directory`` is now written by ``run_id`` alone: its token, one
    above the highest so far, committed to the folder's Delta log (created with
    ``schema`` where there is none; a folder of parts from before the log is taken into
    one), and named in ``_leases/``.  Returns the token."""
    storage.makedirs(directory)
    for _ in range(100):
        history = lease_history(directory)
        held = delta.lease_token(directory)
        token = max([held or 0] + [t for t, _, _ in history]) + 1
        try:
            if held is None and not delta.exists(directory) and _adopt(directory, token, schema):
                pass
            else:
                delta.take(directory, token, schema)
        except delta.Superseded:
            continue            # another run took it meanwhile: a token above theirs
        storage.write_bytes(storage.join(directory, LEASES, f"{token:09d}-{run_id}"), b"")
        return token
    raise EnvironmentProblem(f"{directory}: the lease kept being taken by other runs")


def _adopt(directory: str, token: int, schema: Optional[pa.Schema]) -> bool:
    """A folder of parts written before the Delta log: its counted parts become the first
    version of the folder's table (with this run's lease); False where it holds none."""
    parts, marked = _listing(directory)
    if _before_markers(directory, marked):
        marked = set(parts)
    counted = [n for n in parts if n in marked]
    if not counted:
        return False
    sizes = {storage.basename(i.path): i.size for i in storage.list_infos(directory)}
    schemas = [read_schema(storage.join(directory, n)) for n in counted]
    merged = pa.unify_schemas([pa.schema([f.remove_metadata() for f in sc]) for sc in ([schema] if schema else [])
                               + schemas])
    from deltalake.transaction import AddAction  # noqa: F401 - delta builds the actions

    adds = [delta._add(n, sizes.get(n) or storage.info(storage.join(directory, n)).size, None) for n in counted]
    if not delta._create(directory, merged, adds, token):
        raise delta.Superseded("created meanwhile")
    log.info("%s: %d part(s) written before the Delta log are now its first version", directory, len(counted))
    return True


def _alive(directory: str, run_id: str) -> str:
    return storage.join(directory, LEASES, f"alive-{run_id}")


def store_now_ns(directory: str) -> Optional[int]:
    """The store's clock now (a probe object written, its modification time read, removed);
    None where the store gives no times."""
    probe = storage.join(directory, LEASES, f"probe-now-{uuid.uuid4().hex[:8]}")
    storage.write_bytes(probe, b"")
    try:
        return storage.info(probe).mtime_ns
    finally:
        storage.delete(probe)


def live_holder(directory: str) -> Optional[Dict[str, Any]]:
    """The run that holds ``directory``'s lease and is alive (its heartbeat fresh by the
    store's clock): ``{"run", "since" (UTC text), "heard_s"}``; None when no run holds it,
    or its holder ended or is gone."""
    history = lease_history(directory)
    if not history:
        return None
    _, run, at = history[-1]
    alive = storage.info(_alive(directory, run))
    if alive.type == storage.pafs.FileType.NotFound or alive.mtime_ns is None:
        return None
    if not _process_lives(directory, run):
        return None
    now = store_now_ns(directory)
    heard = (now - alive.mtime_ns) / 1e9 if now is not None else 0.0
    if heard > HEARTBEAT_S * STALE_AFTER:
        return None
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at / 1e9)) if at else "?"
    return {"run": run, "since": since, "heard_s": max(0.0, heard)}


def _who() -> bytes:
    import socket

    return json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()


def _process_lives(directory: str, run: str) -> bool:
    """Whether the driver that wrote the proof of life of ``run`` may still live: False only
    when it ran on this host and its process is gone."""
    import socket

    try:
        who = json.loads(storage.read_text(_alive(directory, run)) or "{}")
    except (ValueError, OSError, FileNotFoundError):
        return True
    if who.get("host") != socket.gethostname() or not who.get("pid"):
        return True
    try:
        os.kill(int(who["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """The driver's proof of life for the leases it holds: each ``alive`` object rewritten
    every :data:`HEARTBEAT_S` seconds on a daemon thread until :meth:`stop`, which removes
    them.  A beat that fails (the store refusing for a while) is tried again at the next."""
    def __init__(self, directories: Sequence[str], run_id: str) -> None:
        import threading

        self.paths = [_alive(d, run_id) for d in directories]
        self.who = _who()
        for p in self.paths:
            storage.write_bytes(p, self.who)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="vadclip-lease-heartbeat")
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(HEARTBEAT_S):
            try:
                for p in self.paths:
                    storage.write_bytes(p, self.who)
                failing = False
            except Exception as e:  # noqa: BLE001 - the next beat tries again; staleness decides
                if not failing:     # once per outage, not every beat
                    log.warning("the output's lease could not be renewed (tried again every %.0f s): %s",
                                HEARTBEAT_S, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
                failing = True

    def stop(self) -> None:
        self._stop.set()
        for p in self.paths:
            try:
                storage.delete(p)
            except Exception:  # noqa: BLE001 - a left object goes stale on its own
                pass


def lease_holder(directory: str) -> Optional[str]:
    """The run that holds ``directory``'s lease now (None: no run ever took it)."""
    history = lease_history(directory)
    return history[-1][1] if history else None


def check_lease(directory: str, token: int) -> None:
    """Raise :class:`LeaseLost` once the folder's Delta log names a later lease than
    ``token`` (no log, or no lease in it: an output written by a single process)."""
    held = delta.lease_token(directory)
    if held is not None and held > token:
        raise LeaseLost(f"{directory}: a later run (lease {held}) writes this output now; the writers of "
                        f"lease {token} stop without committing")


class LeaseGuard:
    """A writer's check before it writes a part, made at most every ``every`` seconds (a
    look at the Delta log; the commit itself is fenced whatever this says), so a writer
    whose run was taken over stops uploading soon after."""
    def __init__(self, directory: str, token: int, every: Optional[float] = None, clock=time.monotonic):
        self.directory, self.token, self.clock = directory, token, clock
        self.every = LEASE_CHECK_S if every is None else every
        self._last: Optional[float] = None

    def __call__(self) -> None:
        now = self.clock()
        if self._last is None or now - self._last >= self.every:
            check_lease(self.directory, self.token)
            self._last = now


def remove_uncommitted(directory: str, token: Optional[int] = None) -> int:
    """Delete the part files no commit of the folder's Delta log holds: left unfinished by
    an interrupted run, written by a writer after its run lost the lease, or replaced by
    a rewrite; and the commit markers of a folder taken into a Delta log.  With the run's
    lease ``token``, files the log holds but the store no longer has (deleted by hand or by
    a lifecycle rule) are taken out of the log in one commit, so their videos count as not
    done and any reader of the table reads on.  Returns how many parts went."""
    live = delta.files(directory)
    if live is None:
        return 0
    live = set(live)
    present = {storage.basename(f) for f in storage.list_files(directory, recursive=False)}
    stale = [n for n in present if _is_part(n) and n not in live]
    for n in stale:
        storage.delete(storage.join(directory, n))
    for i in storage.list_infos(storage.join(directory, MARKERS)):
        storage.delete(storage.join(directory, MARKERS, storage.basename(i.path)))
    if stale:
        log.warning("%s: removed %d part file(s) no commit holds (an interrupted run's, or replaced)",
                    directory, len(stale))
    gone = sorted(n for n in live if "/" not in n and n not in present)
    if gone and token is not None:
        delta.commit(directory, [], pa.schema([]), removes=gone, token=token, what="repair")
        log.warning("%s: %d committed part file(s) are gone from the store (e.g. %s): taken out of the "
                    "table; their videos run again", directory, len(gone), gone[0])
    return len(stale)


def dataset_files(path: str, what: str = "feature set") -> List[str]:
    """The Parquet files of a table given as a file or a folder: a folder of part
    files gives its committed parts; any other folder its ``.parquet`` files."""
    in_log = delta.files(path)      # first: a table read before costs a look at its log, nothing more
    if in_log is not None:
        return [storage.join(path, n) for n in in_log]
    if storage.isfile(path):
        return [path]
    if not storage.isdir(path):
        raise MissingInputError(f"{what} not found: {path}")
    names = [storage.basename(f) for f in storage.list_files(path, recursive=False)]
    if any(_is_part(n) for n in names):
        files = part_files(path)
    else:
        # hidden and bookkeeping entries (``_committed/`` markers, ``.tmp`` files) are no data,
        # whatever their depth (a part folder whose parts are all gone still has its markers)
        base = path.rstrip("/") + "/"
        files = [f for f in storage.list_files(path, recursive=True, suffixes=(".parquet",))
                 if not any(c.startswith((".", "_")) for c in f[len(base):].split("/"))]
    return files


def read_table(path: str, columns: Optional[Sequence[str]] = None, what: str = "table",
               optional: Sequence[str] = ()) -> pa.Table:
    """A whole table (file or folder, see :func:`dataset_files`), optionally some columns
    and ``optional`` ones where a file has them (nulls where it has not)."""
    tables = []
    for f in dataset_files(path, what):
        extra = [c for c in optional if c in read_schema(f).names] if columns is not None and optional else []
        tables.append(read_file(f, None if columns is None else list(columns) + extra))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in (columns or [])})
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


IDENTITY_COLUMN = "input_identity"
IDENTITY_KEY = b"vadclip.input_identity"      # where parts written before 2026-12-07 kept it


def read_identities(directory: str, cache: Optional[Dict[str, pa.Table]] = None) -> pa.Table:
    """The committed parts of ``directory`` as one Arrow table, a row per path: ``path``,
    ``identity`` (of the input when its rows were written; null where a part predates
    identities) and ``video_id``.  ``cache`` keeps what each part held as a small Arrow
    table, so reading the folder again reads only the parts new since.  Nothing here is a
    Python object per row: the done set of an archive of 900,000 recordings is columns."""
    cache = {} if cache is None else cache
    files = part_files(directory)
    for f, t in _each_read([f for f in files if f not in cache], _identity_columns):
        if t is None:
            # committed, then lost from the store: its videos are not done (the run that takes
            # the folder next takes the file out of the table, see remove_uncommitted)
            log.warning("%s: a committed part is gone from the store; its videos run again", f)
        else:
            cache[f] = _identity_table(t)
    held = [cache[f] for f in files if cache.get(f) is not None]
    if not held:
        return IDENTITIES.empty_table()
    # a video's crops and segments are rows of one path (one identity): its first row stands for
    # them (a hash of the distinct paths: Acero's group_by held ~75 MB more at 100,000 videos)
    t = pa.concat_tables(held)
    distinct = pc.unique(t["path"])
    if len(distinct) == t.num_rows:     # a row per video (one crop, no segments): the parts' own columns
        return pa.table([t["path"], t["identity"], t["video_id"]], schema=IDENTITIES)
    paths = t["path"].combine_chunks()
    first = pc.index_in(distinct, value_set=paths)
    return pa.table({"path": pc.take(paths, first), "identity": pc.take(t["identity"], first),
                     "video_id": pc.take(t["video_id"], first)}, schema=IDENTITIES)


IDENTITIES = pa.schema([("path", pa.string()), ("identity", pa.string()), ("video_id", pa.string())])


READ_THREADS = 16    # part footers read at once (an object store answers each in a round trip)


def _each_read(files: Sequence[str], read) -> Iterable[Tuple[str, Optional[pa.Table]]]:
    """``(file, read(file))`` for each file, up to :data:`READ_THREADS` reads at once, each in
    this context (:func:`read_once` holds what they fetch); None for a file gone from the store."""
    from concurrent.futures import ThreadPoolExecutor

    def one(f):
        try:
            return f, read(f)
        except FileNotFoundError:
            return f, None

    if len(files) < 2:
        return [one(f) for f in files]
    # a copy of this thread's context per read, so each read sees the same read_once() store
    contexts = [contextvars.copy_context() for _ in files]
    with ThreadPoolExecutor(min(READ_THREADS, len(files))) as pool:
        return list(pool.map(lambda c, f: c.run(one, f), contexts, files))


def read_ahead(files: Sequence[str], read, window: int = 2 * READ_THREADS) -> Iterator[Tuple[str, Any]]:
    """``(file, read(file))`` in the files' order, up to :data:`READ_THREADS` reads at once
    and at most ``window`` results held: a pass over every part of a folder that folds each
    one in as it comes (the report's) waits on the store once per ``READ_THREADS`` parts,
    and its memory does not grow with the folder."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if len(files) < 2:
        yield from ((f, read(f)) for f in files)
        return
    with ThreadPoolExecutor(min(READ_THREADS, len(files))) as pool:
        q: deque = deque()
        for f in files:
            q.append((f, pool.submit(contextvars.copy_context().run, read, f)))
            if len(q) >= window:
                f0, fut = q.popleft()
                yield f0, fut.result()
        while q:
            f0, fut = q.popleft()
            yield f0, fut.result()


def _identity_columns(f: str) -> pa.Table:
    """A part's path, video id and input identity (a part without the column: its
    schema's metadata keeps the identities, read with the footer)."""
    names = read_schema(f).names
    return read_file(f, [c for c in ("path", "video_id", IDENTITY_COLUMN) if c in names])


def _identity_table(t: pa.Table) -> pa.Table:
    paths = t.column("path").combine_chunks()
    if IDENTITY_COLUMN in t.column_names:
        identity = t.column(IDENTITY_COLUMN).combine_chunks()
        identity = pc.if_else(pc.equal(identity, ""), pa.scalar(None, pa.string()), identity)
    else:
        ids = json.loads((t.schema.metadata or {}).get(IDENTITY_KEY) or b"{}")
        identity = pa.array([ids.get(p) for p in paths.to_pylist()], pa.string()) if ids \
            else pa.nulls(len(t), pa.string())
    return pa.table({"path": paths, "identity": identity, "video_id": t.column("video_id").combine_chunks()})


def committed_table(directory: str, columns: Sequence[str], prefix: str = "part-") -> List[Dict[str, Any]]:
    """Some columns of the committed parts of ``directory`` whose names start with
    ``prefix`` (one run's, or one writer's: see :class:`vadclip.jobs.writers.VideoWriter`), as rows."""
    out: List[Dict[str, Any]] = []
    for f in part_files(directory):
        if storage.basename(f).startswith(prefix):
            out.extend(read_file(f, columns).to_pylist())
    return out


def committed_column(directory: str, column: str, prefix: str = "part-") -> pa.ChunkedArray:
    """One string column of the committed parts of ``directory`` whose names start with
    ``prefix``, as Arrow (parts read :data:`READ_THREADS` at once; empty when there are none)."""
    files = [f for f in part_files(directory) if storage.basename(f).startswith(prefix)]
    got = [t.column(column) for _, t in _each_read(files, lambda f: read_file(f, [column])) if t is not None]
    return pa.chunked_array([c for col in got for c in col.chunks], pa.string())


def committed_text(directory: str, columns: Sequence[str]) -> pa.Table:
    """String ``columns`` of every committed part of ``directory`` as one Arrow table (a
    part without one of them: nulls there), parts read :data:`READ_THREADS` at once."""
    def one(f: str) -> pa.Table:
        names = read_schema(f).names
        t = read_file(f, [c for c in columns if c in names])
        return pa.table({c: t[c].cast(pa.string()) if c in t.column_names else pa.nulls(t.num_rows, pa.string())
                         for c in columns})

    got = [t for _, t in _each_read(part_files(directory), one) if t is not None]
    return pa.concat_tables(got) if got else pa.schema([(c, pa.string()) for c in columns]).empty_table()


def committed_values(directory: str, column: str, prefix: str = "part-") -> List[Any]:
    """One column of :func:`committed_table`."""
    return [r[column] for r in committed_table(directory, [column], prefix)]


def read_column(directory: str, column: str) -> List[Any]:
    """One column of every committed part of ``directory`` (empty when it does not exist)."""
    return committed_values(directory, column)


def drop_rows(directory: str, column: str, values: set, token: Optional[int] = None,
              bases: Optional[Set[str]] = None) -> int:
    """Take out of ``directory`` the rows whose ``column`` is in ``values`` (videos about to
    be written again), in the parts first written as ``bases`` only where given: every
    part holding one is replaced by a part without them, all in one commit.  Returns the
    rows taken out."""
    return _rewrite(directory, column, lambda t, keys: t.filter(pc.invert(pc.is_in(t.column(column), keys))),
                    pa.array(sorted(values, key=str)) if values else None, token, bases)


def parts_holding(directory: str, paths: Set[str]) -> Dict[str, List[str]]:
    """``{path: [bases of the committed parts holding its rows]}`` for those of ``paths``
    that ``directory`` holds (see :func:`part_base`)."""
    out: Dict[str, List[str]] = {}
    if not paths:
        return out
    keys = pa.array(sorted(paths), pa.string())
    for f in part_files(directory):
        col = read_file(f, ["path"]).column("path")
        for p in set(pc.filter(col, pc.is_in(col, keys)).to_pylist()):
            out.setdefault(p, []).append(part_base(storage.basename(f)))
    return out


def update_rows(directory: str, column: str, updates: Dict[Any, Dict[str, Any]],
                token: Optional[int] = None) -> int:
    """Give the rows of ``directory`` whose ``column`` is a key of ``updates`` the new values
    (``{key: {column: value}}``; columns a part lacks are left out): every part holding one is replaced, schema and metadata kept, all in one commit.
    Returns the rows changed."""
    def change(t: pa.Table, keys) -> pa.Table:
        rows = t.to_pylist()
        for r in rows:
            u = updates.get(r[column])
            if u is not None:
                r.update({k: v for k, v in u.items() if k in t.schema.names})
        return pa.Table.from_pylist(rows, schema=t.schema)

    return _rewrite(directory, column, change, pa.array(list(updates)) if updates else None, token)


def part_base(name: str) -> str:
    """The name a part was first written under (a rewrite adds ``.r<hex>``)."""
    return re.sub(r"\.r[0-9a-f]{8}(?=\.parquet$)", "", name)


def _replacement(directory: str, name: str, table: pa.Table) -> Tuple[str, int, int]:
    """``table`` uploaded as the part that replaces ``name`` (``<base>.r<hex>.parquet``, not
    yet committed): (its name, bytes, rows) for :func:`vadclip.io.delta.commit`."""
    fresh = f"{part_base(name)[:-len('.parquet')]}.r{uuid.uuid4().hex[:8]}.parquet"
    data = table_bytes(table)
    storage.write_bytes(storage.join(directory, fresh), data)
    return fresh, len(data), table.num_rows


def _rewrite(directory: str, column: str, fn, keys, token: Optional[int], bases: Optional[Set[str]] = None) -> int:
    if keys is None or not len(keys):
        return 0
    adds, removes, tables, changed = [], [], [], 0
    for f in part_files(directory):
        if bases is not None and part_base(storage.basename(f)) not in bases:
            continue
        hit = pc.is_in(read_file(f, [column]).column(column), keys)
        n = pc.sum(hit).as_py() or 0
        if not n:
            continue            # only the parts holding such a row are read whole
        t = read_file(f)
        new = fn(t, keys)
        name = storage.basename(f)
        removes.append(name)
        changed += n
        if new.num_rows:
            if delta.exists(directory):
                adds.append(_replacement(directory, name, new))
                tables.append(new.schema)
            else:           # a folder from before the Delta log that no run took: replaced in place
                _forget(f)
                storage.write_bytes(f, table_bytes(new))
        elif not delta.exists(directory):
            _forget(f)
            storage.write_bytes(f, table_bytes(new))
    if removes and delta.exists(directory):
        schema = pa.unify_schemas([pa.schema([fl.remove_metadata() for fl in sc]) for sc in tables]) if tables \
            else delta.BASE_SCHEMA
        try:
            delta.commit(directory, adds, schema, removes=removes, token=token, what="rewrite")
        except delta.Superseded:
            raise LeaseLost(f"{directory}: a later run writes this output now") from None
        for name in removes:
            _forget(storage.join(directory, name))
    return changed
