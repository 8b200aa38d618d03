"""Job outputs written by the workers; the driver only coordinates.

A job's output is a table of result rows and a table of error rows, each a folder of
committed Parquet parts (:mod:`vadclip.io.parts`).  :class:`ResumableOutput` is what the
extraction and scoring jobs share: removing the parts an interrupted run left
uncommitted, what earlier runs did (done and failed videos, with the identity of each
input file), and the writers of one run.  The rows reach the parts through Ray Data's
``Datasink``: its ``write`` runs in Ray tasks on the workers, and the driver receives
only what those tasks return (counts).

:func:`row_sink` writes each block it is given straight into committed parts (scoring:
one row per video); a :class:`Claims` actor keeps the rows unique when a feature set
holds a video twice or Ray retries a task.  Extraction, whose rows are assembled from a
video's chunks, routes the chunks to writer actors keyed by video
(:mod:`vadclip.jobs.extract`)."""
from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vadclip.io.parts import (IDENTITIES, Heartbeat, LeaseBusy, LeaseGuard, PartWriter, lease_history, live_holder,
                               new_run_id, read_column, read_identities, remove_uncommitted, take_lease)


@dataclass
class ResumableOutput:
    """The rows and error tables of one job's output folder."""
    rows_dir: str
    errors_dir: str
    # the tables' schemas, for a Delta log created by this run's lease (before any row)
    rows_schema: Optional[pa.Schema] = None
    errors_schema: Optional[pa.Schema] = None
    run_id: Optional[str] = None       # the run holding the output's lease (set by start)
    tokens: Dict[str, int] = field(default_factory=dict)    # {folder: this run's lease token} (set by start)
    # {folder: {path: bases of the parts holding its old rows}}: recordings rewritten at their path,
    # whose old rows go in the commit that adds their new ones (set under the lease by the plan)
    replaces: Dict[str, Dict[str, List[str]]] = field(default_factory=dict)
    _seen: Dict[str, Any] = field(default_factory=dict, repr=False)   # parts read by identities()

    def start(self, wait_s: float = 0.0, log=None) -> str:
        """Before a run — after every check that can refuse it, so a refused run changes
        nothing here: this run takes the output's lease in both folders (the commits of
        an earlier run's writers that outlived its driver stop counting, see
        :mod:`vadclip.io.parts`), then the parts an interrupted run left uncommitted go.
        A live run holding the folder is never fenced: this run waits for it up to
        ``wait_s`` seconds, saying who holds it since when, then stops in one line
        (:class:`LeaseBusy`, exit 2) having changed nothing.  A holder that is gone (no
        heartbeat) is taken over.  Returns the new run's id; :meth:`release` ends it."""
        import random
        import time

        self.run_id = new_run_id()
        dirs = (self.rows_dir, self.errors_dir)
        deadline, said = time.monotonic() + max(0.0, float(wait_s)), 0.0
        while True:
            holder = next((h for h in map(live_holder, dirs) if h is not None and h["run"] != self.run_id), None)
            if holder is None:
                # alive before the lease exists, so a run that looks now sees a live holder
                self.heartbeat = Heartbeat(dirs, self.run_id)
                for d, schema in zip(dirs, (self.rows_schema, self.errors_schema)):
                    self.tokens[d] = take_lease(d, self.run_id, schema)
                # two runs that started together may both have taken it: the later token (then
                # the later run id) keeps it, the other steps back as from a live holder; looked
                # at twice, a second apart, since the other's lease may be on its way
                tops = {lease_history(d)[-1][1] for d in dirs}
                if tops == {self.run_id}:
                    from vadclip.io import storage

                    # another run's lease on its way takes a request (local disk) or a second (an
                    # object store, whose clock it waits past) to land
                    time.sleep(0.2 if storage.is_local(self.rows_dir) else 1.0)
                    tops = {lease_history(d)[-1][1] for d in dirs}
                if tops == {self.run_id}:
                    break
                self._step_back(dirs)
                self.release()
                holder = {"run": sorted(tops - {self.run_id})[0], "since": "just now", "heard_s": 0.0}
            left = deadline - time.monotonic()
            what = (f"{self.rows_dir}: a live run ({holder['run']}, holding it since {holder['since']}, heard from "
                    f"{holder['heard_s']:.0f} s ago) writes this output")
            if left <= 0:
                raise LeaseBusy(f"{what}; this run changed nothing and stops: run it again later, or give --wait "
                                "SECONDS to wait for it")
            if log is not None and time.monotonic() - said >= 60:
                log(f"[output] {what}; waiting for it (at most {left:.0f} s more)")
                said = time.monotonic()
            time.sleep(min(left, 5.0 + random.uniform(0, 5.0)))
        for d in dirs:
            remove_uncommitted(d, self.tokens.get(d))
        return self.run_id

    def __getstate__(self) -> Dict[str, Any]:
        # the writers get the output without the driver's heartbeat (a thread stays where it
        # runs) and without what identities() read of the folder (the driver's, as large as
        # the archive: never shipped to an actor, nor again at each of its restarts)
        return {k: v for k, v in self.__dict__.items() if k not in ("heartbeat", "_seen")}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._seen = {}

    def _step_back(self, dirs) -> None:
        from vadclip.io import storage
        from vadclip.io.parts import LEASES

        for d in dirs:
            for t, r, _ in lease_history(d):
                if r == self.run_id:
                    storage.delete(storage.join(d, LEASES, f"{t:09d}-{r}"))

    def release(self) -> None:
        """The run has ended (done or failed): its heartbeat stops and its proof of life
        goes, so the next run takes the folder at once."""
        hb = getattr(self, "heartbeat", None)
        if hb is not None:
            hb.stop()
            self.heartbeat = None

    def guard(self, directory: Optional[str] = None) -> Optional[LeaseGuard]:
        """The check this run's writers make before writing a part: raises
        :class:`LeaseLost` once a later run holds the lease (their commits are fenced
        whatever it says)."""
        d = directory or self.rows_dir
        return LeaseGuard(d, self.tokens[d]) if d in self.tokens else None

    def identities(self) -> Tuple[pa.Table, pa.Table]:
        """(the done rows, the failed ones) as Arrow tables, a row per path: ``path``,
        ``identity`` of the input its rows were made from, ``video_id``
        (:func:`vadclip.io.parts.read_identities`); a second call reads only the parts
        committed since the first."""
        self._seen["held"] = (read_identities(self.rows_dir, self._seen.setdefault("rows", {})),
                              read_identities(self.errors_dir, self._seen.setdefault("errors", {})))
        return self._seen["held"]

    def named(self) -> pa.Table:
        """``path``, ``video_id`` of the rows and error rows :meth:`identities` read last:
        the ids an output folder gave its videos, which they keep (a path with both: its
        rows' id)."""
        done, failed = self._seen.get("held", (IDENTITIES.empty_table(), IDENTITIES.empty_table()))
        failed = failed.filter(pc.invert(pc.is_in(failed["path"], value_set=done["path"])))
        return pa.concat_tables([done, failed]).select(["path", "video_id"])

    def row_ids(self) -> pa.Array:
        """The video ids of the rows (not the error rows) :meth:`identities` read last."""
        done, _ = self._seen.get("held", (IDENTITIES.empty_table(), None))
        return done["video_id"].unique()

    def replace_later(self, directory: str, paths: Set[str]) -> Set[str]:
        """Under the lease: the rows ``directory`` holds of ``paths`` (recordings rewritten
        at their path, or scored again) stay until the commit that adds their new rows
        takes them out (:class:`PartWriter` ``replaces``); :meth:`finish_replacing` drops
        what no new row replaced.  Returns the paths ``directory`` held."""
        from vadclip.io.parts import parts_holding

        got = parts_holding(directory, set(paths))
        if got:
            self.replaces.setdefault(directory, {}).update(got)
        return set(got)

    def finish_replacing(self) -> int:
        """Under the lease, after the run's writers: the old rows no new row replaced (the
        new file failed, or its video was lost with a writer) are dropped.  Returns how many."""
        from vadclip.io.parts import drop_rows

        n = 0
        for d, by_path in list(self.replaces.items()):
            bases = {b for bs in by_path.values() for b in bs}
            n += drop_rows(d, "path", set(by_path), self.tokens.get(d), bases=bases)
            del self.replaces[d]
        return n

    def this_run(self, columns: List[str]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """What this run committed, read from the folder (a writer that died took its
        counters along, never its committed rows): (its rows' ``columns``, its error rows'
        video_id and error)."""
        from vadclip.io.parts import committed_table

        mine = f"part-{self.run_id}"
        return (committed_table(self.rows_dir, columns, mine),
                committed_table(self.errors_dir, ["video_id", "error"], mine))

    def ids(self, column: str = "video_id") -> Tuple[Set[str], Set[str]]:
        """The values of ``column`` over the done rows and over the failed ones."""
        return set(read_column(self.rows_dir, column)), set(read_column(self.errors_dir, column))

    def writers(self, run_id: str, schema: pa.Schema, error_schema: pa.Schema, rows_per_file: int,
                flush_seconds: Optional[float], identities: bool = False,
                on_commit=None) -> Tuple[PartWriter, PartWriter]:
        """(rows writer, errors writer) for parts named after ``run_id``; ``on_commit(rows)``
        hears of the rows of each part once it is committed, in either table."""
        return (PartWriter(self.rows_dir, schema, rows_per_file, run_id, flush_seconds, identities=identities,
                           guard=self.guard(self.rows_dir), on_commit=on_commit, token=self.tokens.get(self.rows_dir),
                           replaces=self.replaces.get(self.rows_dir)),
                PartWriter(self.errors_dir, error_schema, 64, run_id, flush_seconds, identities=identities,
                           guard=self.guard(self.errors_dir), on_commit=on_commit,
                           token=self.tokens.get(self.errors_dir)))


MAX_ROUNDS = 3       # a job's pipeline runs again over the videos a lost node took with it, at most this often


def in_rounds(job: str, todo, one_round, missing, log, first=lambda lost: lost[0]) -> None:
    """Run ``one_round(todo, rnd)``, then again over ``missing(todo)``: the videos neither
    a committed row nor a committed error row of this run (their chunks or rows died with a
    worker node or a writer), at most :data:`MAX_ROUNDS` times in all.  A round the cluster
    cut short by losing a node goes on to that count; any other failure is raised.  A
    video still missing then fails the job (an environment problem): exit 0 always means
    every video is there (``first(lost)`` names one of those).  The one retry loop of extraction
    and scoring."""
    from vadclip.errors import EnvironmentProblem
    from vadclip.jobs.cluster import lost_with_a_node

    for rnd in range(1, MAX_ROUNDS + 1):
        try:
            one_round(todo, rnd)
        except Exception as e:  # noqa: BLE001 - sorted here
            if not lost_with_a_node(e):
                raise
            log(f"[{job}] round {rnd}: the pipeline lost a worker ({type(e).__name__}); "
                "the videos not written are run again")
        lost = missing(todo)
        if not len(lost):
            return
        if rnd == MAX_ROUNDS:
            raise EnvironmentProblem(f"{len(lost)} videos (e.g. {first(lost)}) are still not written after "
                                     f"{MAX_ROUNDS} rounds: the cluster keeps losing the workers holding them; "
                                     "run the same command again to resume")
        log(f"[{job}] {len(lost)} videos were lost with a worker (a node lost or a writer restarted): "
            f"running them again (round {rnd + 1} of at most {MAX_ROUNDS})")
        todo = lost


def shard_of(video_id: str, n: int) -> int:
    """Which of ``n`` writers owns a video (stable across processes and runs)."""
    return zlib.crc32(str(video_id).encode()) % n


def parts_dataset(files: Sequence[str], schema: pa.Schema, where=None):
    """A Ray Dataset of the rows of ``files`` (committed parts the driver has listed),
    one block per file, each read by a task through :mod:`vadclip.io.storage` (its retries,
    its filesystems) with ``where`` (a ``pyarrow.compute`` expression) applied as it is
    read, and conformed to ``schema`` (a column an older part lacks reads as nulls).

    Not ``ray.data.read_parquet``: its ``ListFiles`` operator lists and stats again, in
    worker processes, files the driver has just listed from the commit markers (a
    request per part, and the operator whose worker aborted in #47's demo runs)."""
    import ray.data

    ds = ray.data.from_items([{"part": f} for f in files], override_num_blocks=max(1, len(files)))
    return ds.map_batches(_read_parts, fn_kwargs={"schema": schema, "where": where}, batch_size=1,
                          batch_format="pyarrow")


def _read_parts(batch: pa.Table, schema: pa.Schema, where=None) -> pa.Table:
    from vadclip.io.parts import read_file

    tables = []
    for path in batch.column("part").to_pylist():
        t = conform(read_file(path), schema)
        tables.append(t if where is None else t.filter(where))
    return pa.concat_tables(tables) if tables else pa.Table.from_pylist([], schema=pa.schema(list(schema)))


def conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t`` with exactly ``schema``'s columns (one it lacks: nulls), without metadata; a
    stored ``meta`` text read as the map ``schema`` asks for
    (:func:`vadclip.io.features.as_read_by_a_stage`)."""
    from vadclip.io.features import META_MAP, meta_map

    def column(f: pa.Field):
        if f.name not in t.column_names:
            return pa.nulls(t.num_rows, f.type)
        c = t.column(f.name)
        if f.type == META_MAP and c.type != META_MAP:
            return meta_map(c)
        return c.cast(f.type)

    return pa.Table.from_arrays([column(f) for f in schema], schema=pa.schema(list(schema)))


def whole_videos_dataset(videos: Dict[str, List[str]], schema: pa.Schema, where=None):
    """A Ray Dataset of whole-video feature rows for long recordings kept in segments
    (``{video_id: its part files}``): each task reads one video's segments and joins
    them (:func:`vadclip.io.features.whole_videos`)."""
    import ray.data

    items = [{"video_id": v, "parts": list(fs)} for v, fs in sorted(videos.items())]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _join_segments, fn_kwargs={"schema": schema, "where": where}, batch_size=1, batch_format="pyarrow")


def _join_segments(batch: pa.Table, schema: pa.Schema, where=None) -> pa.Table:
    import pyarrow.compute as pc

    from vadclip.io.features import whole_videos

    rows = []
    for vid, parts in zip(batch.column("video_id").to_pylist(), batch.column("parts").to_pylist()):
        mine = pc.field("video_id") == vid
        rows.extend(_read_parts(pa.table({"part": parts}), schema, mine if where is None else mine & where).to_pylist())
    return pa.Table.from_pylist(whole_videos(rows), schema=pa.schema(list(schema)))


def block_columns(block) -> Dict[str, np.ndarray]:
    """A Ray Data block as numpy columns (ragged tensors as object arrays); {} when it
    has no rows (a filter may leave a block empty, without columns)."""
    from ray.data.block import BlockAccessor

    acc = BlockAccessor.for_block(block)
    return acc.to_numpy() if acc.num_rows() else {}


class Ticker:
    """Calls ``fn`` every ``every`` seconds on a daemon thread, under ``lock``, until
    stopped.  An exception of ``fn`` is kept (the thread goes on ticking) and raised by
    :meth:`raise_error`, which the owner calls on its next call: a timed flush that
    fails never stops silently."""

    def __init__(self, fn, every: float, lock: threading.Lock):
        self._stop = threading.Event()
        self.error: Optional[BaseException] = None

        def run():
            while not self._stop.wait(every):
                with lock:
                    try:
                        fn()
                    except Exception as e:  # noqa: BLE001 - handed to the owner's next call
                        self.error = e

        threading.Thread(target=run, daemon=True).start()

    def raise_error(self) -> None:
        err, self.error = self.error, None
        if err is not None:
            raise err

    def stop(self) -> None:
        self._stop.set()


class Closable:
    """A helper actor that ends itself (:func:`end_actors`): it exits as a process does,
    so the GCS sends no KillActor RPC, whose reply racing the worker's exit makes Ray 2.60's
    GCS log ``Failed to kill actor`` on the job's stderr."""

    def close(self) -> None:
        import ray

        ray.actor.exit_actor()


def end_actors(actors: Sequence[object], timeout: float = 30.0) -> None:
    """End helper actors (:class:`Closable`) for good: each exits itself (the call is not
    retried, so a restartable actor is not restarted to run it again); one that does not
    answer in ``timeout`` seconds, or is being restarted, is killed."""
    import ray
    from ray.exceptions import ActorDiedError

    refs = [(a, a.close.options(max_task_retries=0).remote()) for a in actors]
    for a, ref in refs:
        try:
            ray.get(ref, timeout=timeout)
        except ActorDiedError:
            continue                      # it exited: what close does
        except Exception:  # noqa: BLE001 - a timeout, or unavailable (restarting after a lost node): make sure
            pass
        ray.kill(a, no_restart=True)


class Claims(Closable):
    """A Ray actor that hands out each key once (rows unique across write tasks).  A
    retried task (same claimant) gets its own keys again, so a write task that died
    after claiming loses nothing."""

    def __init__(self, taken: Iterable[str] = ()):
        self.owner: Dict[str, object] = {k: None for k in taken}

    def claim(self, keys: Sequence[str], claimant: object) -> List[bool]:
        out = []
        for k in keys:
            who = self.owner.setdefault(k, claimant)
            out.append(who == claimant)
        return out


HELPER_CPUS = 0.25     # what a writer reserves where the driver's node offers no CPU (a cluster's head)


def helper_placement(spread: bool = False) -> Dict[str, object]:
    """Ray options of a helper actor (a writer) on the worker nodes, as they come.

    Where the driver's node offers no CPU to tasks (a cluster's head, as
    ``cluster.yaml`` starts it) a helper reserves :data:`HELPER_CPUS`, so it is never
    placed there and, on a cluster at ``min_workers: 0``, its demand makes the
    autoscaler launch a worker node.  Where the driver's node runs work itself (the
    embedded local Ray, one machine) it reserves none: a share of a CPU there would take
    a decode task's place (on two cores, the only one).  Ray restarts a helper wherever
    it can when its process or node dies (``max_restarts=-1``) and retries its calls on
    the new incarnation; ``spread`` spreads a group over the nodes."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    cpus = next((float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n["NodeID"] == here), 0.0)
    return {"num_cpus": 0 if cpus > 0 else HELPER_CPUS, "max_restarts": -1, "max_task_retries": -1,
            **({"scheduling_strategy": "SPREAD"} if spread else {})}


def driver_node_soft() -> object:
    """Soft affinity to the driver's node (a coordinator beside the driver: that node
    dying ends the job anyway); anywhere else when it cannot."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)


def row_sink(output: ResumableOutput, run_id: str, schema: pa.Schema, error_schema: pa.Schema,
             rows_per_file: int, to_rows, taken: Iterable[str] = ()):
    """A Ray Data ``Datasink``: each write task turns its blocks into rows
    (``to_rows(Arrow table) -> (good rows, error rows)``), keeps those whose ``video_id`` the
    :class:`Claims` actor hands it, and writes them as committed parts (at most
    ``rows_per_file`` each; every block is committed when its task ends).  Each task
    returns its counts and error lines; ``totals`` sums them on the driver.  ``close()``
    ends the claims actor."""
    import ray
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    # one small coordinator beside the driver, restarted by Ray if it dies (it then knows
    # the videos done before this run; a retried task reclaims its own keys)
    claims = ray.remote(Claims).options(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                                        scheduling_strategy=driver_node_soft()).remote(list(taken))

    class _RowSink(Datasink):
        def __init__(self):
            self.claims, self.totals = claims, {}

        def get_name(self) -> str:
            return "WriteParts"

        def write(self, blocks, ctx) -> Dict[str, int]:
            # one writer per task, its parts named by this run and this task: a retried task
            # writes the same rows under the same names (idempotent on disk and in buckets)
            rw, ew = output.writers(f"{run_id}-t{ctx.task_idx:06d}", schema, error_schema, rows_per_file, None)
            n = {"rows": 0, "errors": 0, "duplicates": 0, "snippets": 0, "failures": []}
            seen: set = set()
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                if not table.num_rows:
                    continue
                good, bad = to_rows(table)
                keys = [r["video_id"] for r in good + bad]
                fresh = ray.get(self.claims.claim.remote(keys, ctx.task_idx)) if keys else []
                fresh = [f and k not in seen and not seen.add(k) for k, f in zip(keys, fresh)]
                keep_good = [r for r, f in zip(good, fresh[:len(good)]) if f]
                keep_bad = [r for r, f in zip(bad, fresh[len(good):]) if f]
                n["duplicates"] += len(keys) - len(keep_good) - len(keep_bad)
                rw.add(keep_good)
                ew.add(keep_bad)
                n["rows"] += len(keep_good)
                n["errors"] += len(keep_bad)
                n["snippets"] += sum(int(r.get("snippet_count") or 0) for r in keep_good)
                n["failures"] += [r["error"] for r in keep_bad][:100]
            rw.flush()
            ew.flush()
            return n

        def on_write_complete(self, write_result) -> None:
            for ret in write_result.write_returns:
                for k, v in (ret or {}).items():
                    self.totals[k] = self.totals.get(k, [] if isinstance(v, list) else 0) + v

        def close(self) -> None:
            end_actors([self.claims])

    return _RowSink()
