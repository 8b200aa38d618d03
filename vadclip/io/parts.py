"""Output tables as Parquet part files, resumable on local disk and in object storage.

A job writes its rows in parts named ``part-<run id>-<n>.parquet`` (unique per run,
so two runs never write the same name) and, once a part is whole, a commit marker
``_committed/<part name>``.  A part counts as done only when its marker exists: a
crash while a part is being written (or uploaded) leaves an uncommitted part that
readers ignore and the next run deletes, so resuming never counts a half-written
part and never duplicates or loses a row.  (Output folders written before markers
existed, on local disk with an atomic rename, are read as they are.)"""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from vadclip.io import storage
from vadclip.errors import MissingInputError

log = logging.getLogger(__name__)

MARKERS = "_committed"


def new_run_id() -> str:
    """A unique, time-ordered stamp for the part names of one job run."""
    return time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


class PartWriter:
    """Buffers rows and writes them as committed part files.

    A part is written once ``rows_per_file`` rows are buffered or, for a slow job,
    once the oldest buffered row has waited ``flush_seconds``: an interrupted job
    loses at most that much work, and the number of part files stays bounded by
    the job's duration / ``flush_seconds``."""

    def __init__(self, directory: str, schema: pa.Schema, rows_per_file: int, run_id: str,
                 flush_seconds: Optional[float] = 60.0, clock=time.monotonic, identities: bool = False,
                 guard=None) -> None:
        self.dir, self.schema, self.rows_per_file, self.run_id = directory, schema, rows_per_file, run_id
        self.guard = guard          # called before each commit; raises when this run may no longer write
        # rows carry "input_identity" (not a column): kept per path in each part's metadata
        self.identities = identities
        self.flush_seconds, self.clock = flush_seconds, clock
        self.buf: List[Dict[str, Any]] = []
        self.parts = 0
        self._oldest: Optional[float] = None
        storage.makedirs(directory)

    def add(self, rows: Iterable[Dict[str, Any]]) -> None:
        rows = list(rows)
        if rows and not self.buf:
            self._oldest = self.clock()
        self.buf.extend(rows)
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
            rows, self.buf = self.buf[:self.rows_per_file], self.buf[self.rows_per_file:]
            name = f"part-{self.run_id}-{self.parts:05d}.parquet"
            schema = self.schema
            if self.identities:
                ids = {r["path"]: r.get("input_identity") or None for r in rows}
                schema = schema.with_metadata({**(schema.metadata or {}), IDENTITY_KEY: json.dumps(ids).encode()})
            table = pa.Table.from_pylist(rows, schema=schema)
            if self.guard is not None:
                self.guard()
            write_part(self.dir, name, table)
            self.parts += 1
        self._oldest = None


def write_part(directory: str, name: str, table: pa.Table) -> str:
    """The part (one whole object), then its commit marker."""
    path = storage.join(directory, name)
    storage.write_bytes(path, table_bytes(table))
    storage.write_bytes(storage.join(directory, MARKERS, name), b"")
    return path


def read_file(path: str, columns: Optional[Sequence[str]] = None, filters=None) -> pa.Table:
    """One Parquet file (a path or URI), optionally some columns or rows."""
    fs, p = storage.resolve(path)
    return pq.read_table(p, columns=list(columns) if columns else None, filters=filters, filesystem=fs)


def _listing(directory: str):
    names = [storage.basename(f) for f in storage.list_files(directory, recursive=False)]
    marked = {storage.basename(f) for f in storage.list_files(storage.join(directory, MARKERS), recursive=False)}
    return sorted(n for n in names if _is_part(n)), marked


def part_files(directory: str) -> List[str]:
    """The committed part files of ``directory`` (none when it does not exist)."""
    parts, marked = _listing(directory)
    if _before_markers(directory, marked):
        marked = set(parts)   # written before commit markers: atomic renames, all whole
    return [storage.join(directory, n) for n in parts if n in marked]


def _before_markers(directory: str, marked) -> bool:
    """A local folder written before commit markers existed (no marker folder at all)."""
    return not marked and storage.is_local(directory) and not storage.exists(storage.join(directory, MARKERS))


LEASE = "_lease"


class LeaseLost(RuntimeError):
    """Another run of the same output has started: this run's writers stop."""


def take_lease(directory: str, run_id: str) -> None:
    """The output folder ``directory`` is now written by ``run_id`` alone (a small
    object beside the parts; a run that started later takes it over)."""
    storage.makedirs(directory)
    storage.write_text(storage.join(directory, LEASE), run_id)


def check_lease(directory: str, run_id: str) -> None:
    """Raise :class:`LeaseLost` unless ``run_id`` still holds the lease of ``directory``
    (no lease at all: an output written before leases existed, or by a single process)."""
    path = storage.join(directory, LEASE)
    try:
        holder = storage.read_text(path).strip()
    except OSError:
        if not storage.exists(path):
            return
        raise
    if holder != run_id:
        raise LeaseLost(f"{directory}: a later run ({holder}) writes this output now; the writers of run {run_id} "
                        "stop without committing")


def remove_uncommitted(directory: str) -> int:
    """Delete parts left without a marker by an interrupted run; returns how many."""
    parts, marked = _listing(directory)
    if _before_markers(directory, marked):
        return 0
    stale = [n for n in parts if n not in marked]
    for n in stale:
        storage.delete(storage.join(directory, n))
    if stale:
        log.warning("%s: removed %d part file(s) an interrupted run left unfinished", directory, len(stale))
    return len(stale)


def dataset_files(path: str, what: str = "feature set") -> List[str]:
    """The Parquet files of a table given as a file or a folder: a folder of part
    files gives its committed parts; any other folder its ``.parquet`` files."""
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


def read_table(path: str, columns: Optional[Sequence[str]] = None, what: str = "table") -> pa.Table:
    """A whole table (file or folder, see :func:`dataset_files`), optionally some columns."""
    tables = []
    for f in dataset_files(path, what):
        tables.append(read_file(f, columns))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in (columns or [])})
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


IDENTITY_KEY = b"vadclip.input_identity"


def read_identities(directory: str) -> Dict[str, Optional[str]]:
    """``{path: identity of the input when its row was written}`` over the committed
    parts of ``directory`` (None where a part predates identities)."""
    out: Dict[str, Optional[str]] = {}
    for f in part_files(directory):
        t = read_file(f, ["path"])
        ids = json.loads((t.schema.metadata or {}).get(IDENTITY_KEY) or b"{}")
        for p in t.column("path").to_pylist():
            out[p] = ids.get(p)
    return out


def read_column(directory: str, column: str) -> List[Any]:
    """One column of every committed part of ``directory`` (empty when it does not exist)."""
    out: List[Any] = []
    for f in part_files(directory):
        out.extend(read_file(f, [column]).column(column).to_pylist())
    return out


def drop_rows(directory: str, column: str, values: set) -> None:
    """Rewrite the committed parts of ``directory`` without the rows whose ``column``
    is in ``values`` (failed videos about to be retried).  Each part is replaced in
    one write, so a crash leaves either the old or the new part."""
    for f in part_files(directory):
        t = read_file(f)
        keep = [v not in values for v in t.column(column).to_pylist()]
        if not all(keep):
            storage.write_bytes(f, table_bytes(t.filter(pa.array(keep))))
