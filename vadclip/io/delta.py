"""The output tables' commit log: Delta Lake (delta-rs, the ``deltalake`` package).

vadclip writes each part file itself (pyarrow, through :mod:`vadclip.io.storage` and its
retries), then commits it to the folder's Delta log in one transaction: a video's rows
(every crop; a long recording's segments) count in one step or not at all, a rewrite
removes the old file and adds the new one in one step, and any Delta reader (DuckDB's
``delta_scan``, Polars' ``read_delta``, Spark, Trino, ``deltalake.DeltaTable``) sees
exactly the committed rows of a folder, never a part a run is still writing.

Fencing: a run that takes a folder commits a Delta *application transaction*
(``txn``: app id :data:`LEASE_APP`, version = its lease token).  Every commit of its
writers carries the same ``txn``, so Delta's conflict check refuses a commit of a
writer whose run was superseded between its read of the log and its commit, and the
writer refuses to commit when the log already names a later token
(:class:`vadclip.io.parts.LeaseLost`).  A writer that outlived its driver therefore
never adds a row the next run also writes.

Object stores: S3 needs an atomic put-if-absent for the log, which S3 and S3-API
servers give with conditional puts (``conditional_put=etag``, set here unless
``AWS_S3_LOCKING_PROVIDER`` or the ``storage_options`` say otherwise)."""
from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl

import pyarrow as pa

from vadclip.io import storage
from vadclip.errors import EnvironmentProblem

LOG = "_delta_log"
LEASE_APP = "vadclip.lease"
# every vadclip table has these: a table whose first commit is a lease (before any row
# is written) starts with them, and the columns of its first part are added to them
BASE_SCHEMA = pa.schema([("video_id", pa.string()), ("path", pa.string())])
COMMIT_TRIES = int(os.environ.get("VADCLIP_COMMIT_TRIES", "40"))

_tables: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], object] = {}
_lock = threading.RLock()
# {table: a lock}: a process holds one DeltaTable object per table, which each look brings up to
# date in place; a commit holds its table's lock from its read of the files to its write, so that
# another thread's look cannot move the object to a newer version in between (delta-rs would then
# take the newer version as the commit's read version, and a remove prepared from the older one
# would pass its conflict check: two writers each removing one part and adding their rewrites)
_table_locks: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], threading.RLock] = {}


def _table_lock(uri: str, opts: Dict[str, str]) -> threading.RLock:
    with _lock:
        return _table_locks.setdefault(_key(uri, opts), threading.RLock())


class Superseded(Exception):
    """The log names a later lease token than the committer's (raised as LeaseLost by parts)."""


def location(directory: str) -> Tuple[str, Dict[str, str]]:
    """(table URI for delta-rs, its storage options) of an output folder given as a path
    or a URI (an S3 URI's pyarrow query options become delta-rs options)."""
    d = str(directory)
    if not storage.is_uri(d) or d.startswith("file://"):
        return os.path.abspath(os.path.expanduser(d[len("file://"):] if d.startswith("file://") else d)), {}
    base, _, query = d.partition("?")
    scheme = base.split("://", 1)[0]
    opts: Dict[str, str] = {}
    if scheme == "s3":
        q = dict(parse_qsl(query))
        endpoint = q.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{q.get('scheme', 'https')}://{endpoint}"
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            opts["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        for ours, theirs in (("access_key", "AWS_ACCESS_KEY_ID"), ("secret_key", "AWS_SECRET_ACCESS_KEY"),
                             ("session_token", "AWS_SESSION_TOKEN"), ("region", "AWS_REGION")):
            if q.get(ours):
                opts[theirs] = q[ours]
        if "AWS_REGION" not in opts and not os.environ.get("AWS_REGION") and os.environ.get("AWS_DEFAULT_REGION"):
            opts["AWS_REGION"] = os.environ["AWS_DEFAULT_REGION"]
        if not os.environ.get("AWS_S3_LOCKING_PROVIDER"):
            opts["conditional_put"] = "etag"
    return base.rstrip("/"), opts


def exists(directory: str) -> bool:
    """Whether ``directory`` holds a Delta log."""
    return storage.isdir(storage.join(directory, LOG))


def table(directory: str):
    """The folder's Delta table brought up to its latest version (one object per folder
    and process, updated incrementally: a look at a table it has read is a request or two),
    or None where the folder holds no Delta log."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri, opts = location(directory)
    key = _key(uri, opts)
    with _lock:
        dt = _tables.get(key)
    if dt is not None:
        with _table_lock(uri, opts):
            storage.retrying(dt.update_incremental, storage.join(directory, LOG))
        return dt
    if not exists(directory):
        return None
    try:
        dt = storage.retrying(lambda: DeltaTable(uri, storage_options=opts or None), storage.join(directory, LOG))
    except TableNotFoundError:
        return None
    with _lock:
        _tables[key] = dt
    return dt


def _key(uri: str, opts: Dict[str, str]):
    # a table is where it is: the same folder name behind another endpoint or credential is another table
    return uri, tuple(sorted(opts.items()))


def forget(directory: str) -> None:
    with _lock:
        _tables.pop(_key(*location(directory)), None)


def files(directory: str) -> Optional[List[str]]:
    """The files of the table's current version, relative to the folder (None: no Delta log)."""
    dt = table(directory)
    return None if dt is None else _names(dt, directory)


def _names(dt, directory: str) -> List[str]:
    """The current version's file names; their sizes, which the log records, kept for
    :func:`size_of`."""
    adds = pa.table(dt.get_add_actions(flatten=True))
    if not adds.num_rows:
        return []
    names = adds.column("path").to_pylist()
    with _lock:
        if len(_sizes) > SIZES_KEPT:
            _sizes.clear()
        _sizes.update((storage.join(directory, n), int(b))
                      for n, b in zip(names, adds.column("size_bytes").to_pylist()) if b is not None)
    return sorted(names)


_sizes: Dict[str, int] = {}     # {part file: its size in bytes, as a table's log gives it}
SIZES_KEPT = 1 << 20


def size_of(path: str) -> Optional[int]:
    """The size of a part file as its table's log gave it when the table's files were last
    listed here (a committed part never changes), so that reading it needs no request to
    ask; None when unknown."""
    with _lock:
        return _sizes.get(path)


def lease_token(directory: str) -> Optional[int]:
    """The lease token the log names now (None: no run took the table)."""
    dt = table(directory)
    return None if dt is None else dt.transaction_version(LEASE_APP)


def _delta_schema(schema: pa.Schema):
    from deltalake import Schema

    return Schema.from_arrow(pa.schema([f.remove_metadata() for f in schema]))


def _create(directory: str, schema: pa.Schema, adds, token: Optional[int]) -> bool:
    """Create the table with ``adds`` (and the lease ``token``); False where another
    process created it first."""
    from deltalake.transaction import CommitProperties, Transaction, create_table_with_add_actions

    uri, opts = location(directory)
    props = CommitProperties(app_transactions=[Transaction(LEASE_APP, token)] if token is not None else None)
    try:
        storage.retrying(lambda: create_table_with_add_actions(uri, _delta_schema(schema), adds, mode="error",
                                                               storage_options=opts or None,
                                                               commit_properties=props), directory)
    except Exception as e:  # noqa: BLE001 - only "already exists" is expected here
        if "exist" in str(e).lower():
            return False
        raise
    return True


def _evolve(dt, schema: pa.Schema) -> bool:
    """Add the columns of ``schema`` the table lacks (a commit of its own); True if any."""
    from deltalake import Schema

    have = {f.name for f in dt.schema().fields}
    new = [f for f in schema if f.name not in have]
    if not new:
        return False
    dt.alter.add_columns(Schema.from_arrow(pa.schema([f.remove_metadata() for f in new])).fields)
    return True


def _add(name: str, size: int, rows: Optional[int]):
    from deltalake.transaction import AddAction

    stats = json.dumps({"numRecords": rows}) if rows is not None else ""
    return AddAction(name, int(size), {}, int(time.time() * 1000), True, stats)


def commit(directory: str, adds: Sequence[Tuple[str, int, Optional[int]]], schema: pa.Schema,
           removes: Sequence[str] = (), token: Optional[int] = None, what: str = "commit", prepare=None) -> int:
    """One Delta transaction on ``directory``: ``adds`` (file name, size in bytes, rows) made
    visible and ``removes`` (file names) taken away together.  With ``token`` (a run's lease)
    the commit carries the lease's ``txn`` and raises :class:`Superseded` once the log names
    a later token.  Concurrent commits of the same run are tried again.  ``prepare(names)``,
    given the table's current file names at each try, returns more (adds, removes) for the
    same commit (files rewritten from the current version: a conflict with another commit
    that removed one of them makes the next try prepare them again).  Returns the version."""
    acts = [_add(n, s, r) for n, s, r in adds]
    for attempt in range(COMMIT_TRIES):
        with _table_lock(*location(directory)):
            done = _commit_once(directory, schema, acts, removes, token, what, prepare)
        if done is not None:
            return done
        # another commit of this run (or a run that took the table since: seen at the next look)
        # landed between this one's read and its write: read again, try again
        time.sleep(random.uniform(0.01, min(1.0, 0.02 * 2 ** min(attempt, 6))))
    raise EnvironmentProblem(f"{directory}: {what} kept meeting concurrent commits ({COMMIT_TRIES} tries)")


def _commit_once(directory: str, schema, acts, removes, token, what: str, prepare) -> Optional[int]:
    """One try of :func:`commit`: its version, or None where a concurrent commit won."""
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import CommitProperties, RemoveAction, Transaction

    dt = table(directory)
    if dt is None:
        if _create(directory, schema, acts, token):
            dt = table(directory)
            return dt.version()
        return None
    held = dt.transaction_version(LEASE_APP)
    if token is not None and held is not None and held > token:
        raise Superseded(f"lease {held} > {token}")
    rm: list = []
    try:
        if _evolve(dt, schema):
            dt.update_incremental()
        now = int(time.time() * 1000)
        more_adds, more_removes = prepare(_names(dt, directory)) if prepare is not None else ([], [])
        rm = [RemoveAction(n, True, now) for n in list(removes) + list(more_removes)]
        acts_now = acts + [_add(n, s, r) for n, s, r in more_adds]
        # a commit that removes files is not rebased by delta-rs onto a newer version: refused, it is
        # prepared again here from the version that won (two commits removing one part, each adding
        # its own rewrite of it, would bring rows back and twice); appends alone are rebased
        props = CommitProperties(app_transactions=[Transaction(LEASE_APP, token)] if token is not None else None,
                                 max_commit_retries=0 if rm else None)
        storage.retrying(lambda: dt.create_write_transaction(acts_now + rm, "append", dt.schema(),
                                                             commit_properties=props),
                         f"{directory}: {what}")
        return dt.version()
    except CommitFailedError as e:
        # a commit not rebased (max_commit_retries=0) that met a newer version says only
        # "Failed to commit transaction: 0" (the retries it had)
        if not (_concurrent(e) or (rm and re.fullmatch(r"failed to commit transaction: \d+", str(e).strip().lower()))):
            raise
        return None


def _concurrent(e: BaseException) -> bool:
    text = str(e).lower()
    # "metadata changed": another writer added the same new columns first
    return "concurrent" in text or "already exists" in text or "conflict" in text or "metadata changed" in text


def take(directory: str, token: int, schema: Optional[pa.Schema] = None) -> None:
    """Commit the lease ``token`` (no files), creating the table where there is none;
    raises :class:`Superseded` when the log already names ``token`` or a later one
    (another run took the table meanwhile)."""
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import CommitProperties, Transaction

    for _ in range(COMMIT_TRIES):
        dt = table(directory)
        if dt is None:
            if _create(directory, schema or BASE_SCHEMA, [], token):
                return
            continue
        held = dt.transaction_version(LEASE_APP)
        if held is not None and held >= token:
            raise Superseded(f"lease {held} >= {token}")
        try:
            props = CommitProperties(app_transactions=[Transaction(LEASE_APP, token)])
            storage.retrying(lambda: dt.create_write_transaction([], "append", dt.schema(), commit_properties=props),
                             f"{directory}: lease")
            return
        except CommitFailedError as e:
            if not _concurrent(e):
                raise
            time.sleep(random.uniform(0.01, 0.2))
    raise EnvironmentProblem(f"{directory}: the lease kept meeting concurrent commits")
