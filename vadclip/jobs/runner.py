"""The one runner of the batch jobs (``extract``, ``score --features``, ``score --videos``).

A job (:class:`Job`) says what it is made of; :func:`run` drives every job the same way::

    check ─► quiet? ─► lease every output ─► plan ─► pipelines, each in rounds ─► count ─► finish
    (reads)  (no lease,  (after every check:  (under    (dataset → stages → sink;   (from the  (report,
             no commit)   a refused run        the      a round again over the      folders)   tracking)
                          changes nothing)     leases)  videos a lost node took)

A pipeline (:class:`Pipeline`) is a list of typed stages (:class:`vadclip.jobs.stages.Stage`:
resources on the stage, ``setup()`` once per worker, ``__call__`` per input) between a
dataset of the round's work and a sink that commits each video whole: extraction's
``DecodeStage → EncodeStage → VideoSink`` (whose writer actors assemble each video, score
it for ``score --videos`` with the same :class:`vadclip.jobs.score.ScoreStage`, and commit
it), scoring's ``ScoreStage → RowSink``.  The rounds are :func:`vadclip.jobs.output.in_rounds`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

from vadclip.jobs.stages import Stage, run_stages


class Sink:
    """Where a pipeline's last stage writes: :meth:`datasink` for one round's Ray Data
    write, :meth:`finish` once the round's write has returned (what it did, a dict per
    writer), :meth:`abort` where the round failed for another reason than a lost node
    (what its writers hold is committed, quietly: the round's own error is raised)."""
    write_args: Dict[str, Any] = {}

    def datasink(self):  # pragma: no cover - each sink says what it is
        raise NotImplementedError

    def finish(self) -> List[Dict[str, Any]]:
        return []

    def abort(self) -> None:
        try:
            self.finish()
        except Exception as e:  # noqa: BLE001 - the pipeline's own error is the one raised
            logging.getLogger(__name__).warning("writers could not flush after the pipeline failed: %s", e)

    def watch(self, log) -> Callable[[], None]:
        """Start what reports the round's progress; returns what stops it."""
        return lambda: None


@dataclass
class Pipeline:
    """One pipeline of a job, run in rounds by :func:`run_pipeline`."""
    name: str                                   # the job's name in log lines ("extract", "score")
    todo: Any                                   # what the first round runs (manifest rows, video ids, or None: all)
    datasets: Callable[[Any], Iterable[Any]]    # a round's work as Ray datasets (windows of a long plan)
    stages: Sequence[Stage]
    sink: Callable[[Any, int], Sink]            # the sink of a round: (its todo, its number)
    missing: Callable[[Any], Any]               # after a round: what no committed row or error row holds
    first: Callable[[Any], Any] = lambda lost: lost[0]      # one of those, to name
    results: List[Dict[str, Any]] = field(default_factory=list)   # what every round's sink did


class Job:
    """What :func:`run` drives.  A job is built from its arguments alone; :meth:`check`
    reads and refuses, nothing before :meth:`plan` changes a folder."""
    name = "job"
    wait_s = 0.0          # how long a run waits for a live run holding one of its outputs (--wait)

    def check(self, log) -> None:
        """Every check that can refuse the run (exit 2), reading the output folders and
        changing nothing in them."""

    def quiet(self, log) -> Optional[Dict[str, Any]]:
        """The summary of a run that finds nothing to do (no lease, no commit), else None."""
        return None

    def outputs(self) -> List[Any]:
        """The outputs this run writes (:class:`vadclip.jobs.output.ResumableOutput`), leased
        in this order after :meth:`check`."""
        return []

    def plan(self, log) -> None:
        """Under the leases: what the run does (rows to replace, corrections, the todo)."""

    def pipelines(self, log) -> Iterator[Pipeline]:
        """The job's pipelines in order (a generator: a later one may depend on what the
        one before committed)."""
        return iter(())

    def count(self, t0: float, log) -> Dict[str, Any]:
        """The run's summary, counted from the folders (a writer that died took its
        counters, never its committed rows)."""
        return {}

    def finish(self, summary: Dict[str, Any], log) -> None:
        """After the counts: report, tracking, the summary file."""


def run(job: Job, log=None) -> Dict[str, Any]:
    """Drive ``job``: check, then (unless it is quiet) lease its outputs, plan, run its
    pipelines in rounds, count and finish.  Each committed part is fetched at most once
    (:func:`vadclip.io.parts.read_once`); the leases end whatever happens."""
    from vadclip.io.parts import read_once

    log = log or logging.getLogger("vadclip").info
    held: List[Any] = []
    # the run's writers add parts of new names and never rewrite one, so what the checks and the
    # plan fetched of the folders' parts also serves the counts after the pipelines: a nightly run
    # with one new recording reads each old part's footer once, not twice
    with read_once():
        try:
            job.check(log)
            quiet = job.quiet(log)
            if quiet is not None:
                return quiet
            for out in job.outputs():
                out.start(job.wait_s, log)
                held.append(out)
            job.plan(log)
            t0 = time.time()
            for p in job.pipelines(log):
                run_pipeline(p, log)
            for out in held:
                out.finish_replacing()     # the old rows no new row replaced (their new file failed): dropped now
            summary = job.count(t0, log)
            job.finish(summary, log)
            return summary
        finally:
            for out in reversed(held):
                out.release()


def run_pipeline(p: Pipeline, log) -> List[Dict[str, Any]]:
    """``p`` in rounds (:func:`vadclip.jobs.output.in_rounds`): each round writes its
    datasets through the stages into a sink of its own; a round cut short by a lost node
    counts what its writers committed, then the videos missing run again."""
    from vadclip.jobs.cluster import lost_with_a_node
    from vadclip.jobs.output import in_rounds

    def one_round(todo, rnd):
        sink: Optional[Sink] = None
        stop = lambda: None  # noqa: E731
        lost = None
        try:
            for ds in p.datasets(todo):
                if sink is None:
                    sink = p.sink(todo, rnd)
                    stop = sink.watch(log)
                run_stages(ds, p.stages).write_datasink(sink.datasink(), **sink.write_args)
        except Exception as e:  # noqa: BLE001 - a lost node: what the writers hold counts, then the next round
            stop()
            if sink is None or not lost_with_a_node(e):
                if sink is not None:
                    sink.abort()    # what the writers hold is committed: a re-run resumes from it
                raise
            lost = e
        stop()
        if sink is not None:
            p.results.extend(sink.finish())
        if lost is not None:
            raise lost

    in_rounds(p.name, p.todo, one_round, p.missing, log, first=p.first)
    return p.results
