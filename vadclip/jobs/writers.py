"""The extraction job's writer side, on the workers: the last steps of the extraction
pipeline, assemble → score → write, in writer actors (:class:`VideoWriter`) that own each
video (a video's chunks come from many tasks, so the step that joins them is keyed by
video, not a Ray Data stage): :class:`Assembler` joins a video's encoded chunks (a long
recording in segments), :class:`vadclip.jobs.score.Scorer` feeds the same
:class:`vadclip.jobs.score.ScoreStage` that ``score --features`` runs, and the part
writers commit each video whole.  :class:`VideoSink` is the runner's sink routing each
chunk to its writer; the encoders' pace comes from the rows' ``stage_perf``.

A writer holds only what is not committed yet.  Ray restarts a writer whose process or
node dies (``max_restarts=-1``, its calls retried on the new incarnation); the new
incarnation reads which videos its earlier ones committed (so a chunk delivered again
never commits a video twice), and the videos whose chunks or rows died with the old one
are neither rows nor error rows at the end of the pipeline: the runner runs them again
(:func:`vadclip.jobs.runner.run_pipeline`)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa

from vadclip.io.features import ERROR_SCHEMA, feature_row
from vadclip.io.parts import committed_values, with_identities
from vadclip.jobs.output import Closable, ResumableOutput, Ticker, block_columns, end_actors, helper_placement, shard_of
from vadclip.jobs.runner import Sink


def give_back_memory() -> None:
    """Return the memory a long recording's segment used to the system (Arrow's pool, then
    glibc's heap), so what a writer holds between segments does not creep up with each: a
    segment's rows, Parquet bytes and scores are tens of MB each, freed but kept by the
    allocators otherwise (measured on a day-long recording: +285 MB held after the first
    segment, against its start)."""
    import ctypes

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):      # not glibc: nothing to trim this way
        pass


class _Pace:
    """How the encoders spent the run, from the encode span each row's ``stage_perf`` carries: the
    start-up (job start → the first encode), each encoder's busy fraction (time
    encoding / time from its first encode to its last; 1.0 means the decode tasks kept
    it fed), and the job's steady snippet rate over those spans — what a long archive
    runs at, without the actor start-up and model load."""

    def __init__(self) -> None:
        self.spans: Dict[str, List[float]] = {}   # encoder → [first start, last end, busy, snippets]

    def row(self, row: Dict[str, Any]) -> None:
        if row["error"]:
            return
        enc = row["stage_perf"]["encode"]
        t0, t1 = float(enc["start"]), float(enc["end"])
        sp = self.spans.setdefault(str(enc["worker"]), [t0, t1, 0.0, 0])
        sp[0], sp[1] = min(sp[0], t0), max(sp[1], t1)
        sp[2] += t1 - t0
        sp[3] += len(row["features"])

    def merge(self, spans: Dict[str, List[float]]) -> None:
        """Another writer's spans (an encoder's rows may have gone to several writers)."""
        for enc, (a, b, busy, n) in spans.items():
            sp = self.spans.setdefault(enc, [a, b, 0.0, 0])
            sp[0], sp[1] = min(sp[0], a), max(sp[1], b)
            sp[2] += busy
            sp[3] += n

    def summary(self, t0: float) -> Dict[str, Any]:
        if not self.spans:
            return {}
        first = min(sp[0] for sp in self.spans.values())
        busy = [sp[2] / (sp[1] - sp[0]) if sp[1] > sp[0] else 1.0 for sp in self.spans.values()]
        rate = sum(sp[3] / (sp[1] - sp[0]) for sp in self.spans.values() if sp[1] > sp[0])
        return {"startup_s": round(first - t0, 3), "encoders": len(self.spans),
                "encoder_busy_fraction": round(min(busy), 4),
                "steady_snippets_per_s": round(rate, 3)}


@dataclass
class Segment:
    """A long recording's next ``feats`` [n, crops, D], its snippets from ``start`` on;
    ``row``: the chunk row that completed it (the video's columns)."""
    vid: str
    row: Dict[str, Any]
    feats: np.ndarray
    start: int


@dataclass
class Whole:
    """A video assembled: ``feats`` [T, crops, D] (a long recording: its snippets from
    ``start`` on, the earlier ones given as :class:`Segment`), ``meta`` its last chunk's
    columns (the video's frame count, rate and times) with ``snippet_times``."""
    vid: str
    meta: Dict[str, Any]
    feats: np.ndarray
    start: int


class Assembler:
    """The writer's assemble step: a video's encoded chunks, in any order, joined into
    runs of consecutive chunks; :meth:`add` returns what a chunk completes — past
    ``segment`` snippets a :class:`Segment` of half as many (what a writer holds, writes
    and scores at once then stays below what it does for a recording it writes whole:
    writing and scoring a row costs a few times the row's size for a moment), and at its
    last chunk the :class:`Whole` video.  A chunk met again (a retried task) is ignored."""

    def __init__(self, segment: int = 8192) -> None:
        self.segment = max(1, int(segment))
        self.pending: Dict[str, Dict[str, Any]] = {}

    def drop(self, vid: str) -> None:
        self.pending.pop(vid, None)

    def incomplete(self) -> List[str]:
        """The videos still missing chunks (their other chunks died with a worker)."""
        return sorted(self.pending)

    def add(self, vid: str, row: Dict[str, Any]) -> List[Any]:
        st = self.pending.setdefault(vid, {"chunks": {}, "meta": row, "next": 0, "run": [], "held": 0,
                                           "start": 0, "keep": 0, "chunk_len": 0})
        if int(row["chunk"]) < st["next"]:
            return []       # taken already (a retried task delivers a video's chunks again)
        feats = np.asarray(row["features"], np.float32)
        st["chunks"][int(row["chunk"])] = feats
        st["chunk_len"] = max(st["chunk_len"], feats.shape[0])
        snippets = int(row.get("snippets") or 0)
        if snippets:        # a chunk made once a truncation showed carries the snippets that decode
            st["keep"] = min(st["keep"] or snippets, snippets)
        if int(row["chunk"]) == int(row["n_chunks"]) - 1:
            st["meta"] = row          # the last chunk's frame count, rate and times are the video's
        while st["next"] in st["chunks"]:
            f = st["chunks"].pop(st["next"])
            st["run"].append(f)
            st["held"] += f.shape[0]
            st["next"] += 1
        last = st["next"] == int(row["n_chunks"])
        out: List[Any] = []
        half = max(1, self.segment // 2)
        if int(row["n_chunks"]) * st["chunk_len"] > self.segment:
            while not last and st["held"] > half:
                seg = self._cut(st, half)
                if seg.shape[0]:
                    out.append(Segment(vid, row, seg, st["start"] - seg.shape[0]))
        if last:
            out.append(self._whole(vid, self.pending.pop(vid)))
        return out

    def _cut(self, st: Dict[str, Any], n: int) -> np.ndarray:
        """The next ``n`` snippets of the run held (never a padding snippet of a truncated
        file), a view the writer lets go once it is written and scored; the rest copied out
        (a view would keep the whole concatenation alive until the next segment)."""
        run = np.concatenate(st["run"], axis=0)
        if st["keep"]:
            n = min(n, max(0, st["keep"] - st["start"]))
        seg, rest = run[:n], run[n:]
        st["shape"] = run.shape[1:]
        if st["keep"] and st["start"] + run.shape[0] > st["keep"]:
            rest = rest[:max(0, st["keep"] - st["start"] - n)]
        st["start"] += seg.shape[0]
        st["run"], st["held"] = ([rest.copy()], rest.shape[0]) if rest.shape[0] else ([], 0)
        return seg

    @staticmethod
    def _whole(vid: str, st: Dict[str, Any]) -> Whole:
        feats = np.concatenate(st["run"], axis=0) if st["run"] else np.zeros((0, *st.get("shape", (1, 0))), np.float32)
        meta = dict(st["meta"])
        total = int(meta.get("snippets") or 0)
        if total and total - st["start"] < feats.shape[0]:
            # a truncated file: the snippets past its last decoded frame are padding
            feats = feats[:max(0, total - st["start"])]
        times = meta.get("times")
        meta["snippet_times"] = [float(t) for t in times] if times is not None and len(times) else None
        return Whole(vid, meta, feats, st["start"])


def _crop_rows(vid: str, m: Dict[str, Any], feats: np.ndarray, **kw) -> List[Dict[str, Any]]:
    """A video's (or a segment's) feature rows, one per crop of ``feats`` [n, crops, D], from
    the columns ``m`` of its chunk rows; ``kw``: :func:`feature_row`'s optional columns."""
    return [dict(feature_row(vid, m["path"], m["label"] or None, c, m["fps"], m["num_frames"], feats[:, c],
                             m.get("meta"), **kw),
                 decoder=str(m.get("decoder") or "") or None, input_identity=m["input_identity"])
            for c in range(feats.shape[1])]


class VideoWriter(Closable):
    """A Ray actor owning the videos routed to it (:func:`vadclip.jobs.output.shard_of`):
    it assembles each video's encoded chunks, and writes the video's rows (one per crop)
    or its error row as committed parts — by count, and at least every
    ``flush_seconds``.  A video met again (a retried task) is ignored.  ``finish()``
    writes what is buffered and returns what it did, with the videos still missing
    chunks (the driver runs them again)."""

    def __init__(self, output: ResumableOutput, schema, name: str, rows_per_file: int,
                 flush_seconds: Optional[float], scorer=None, skip_scores=(), segment: int = 8192) -> None:
        import threading

        import ray

        # parts are named writer + incarnation: a restarted writer never reuses a name
        run_id = f"{name}-{uuid.uuid4().hex[:4]}"
        mine = f"part-{name}-"
        # what this writer's earlier incarnations committed (none on a first start)
        self.assembled = set(committed_values(output.rows_dir, "video_id", mine))
        self.dead = set(committed_values(output.errors_dir, "video_id", mine))
        self.scorer = scorer   # score --videos: each assembled video is also scored here (jobs.score.Scorer)
        if scorer is not None:
            # its parts are named after the scoring run (whose lease fences them) and this writer
            writer = f"{scorer.run_id}-{name[len(output.run_id) + 1:]}" if output.run_id else name
            skip = set(skip_scores) | set(committed_values(scorer.output.rows_dir, "video_id", f"part-{writer}-"))
            scorer.run_id = f"{writer}-{run_id.rsplit('-', 1)[1]}"
            scorer.start(skip=skip)
        self.fw, self.ew = output.writers(run_id, schema, ERROR_SCHEMA, rows_per_file, flush_seconds,
                                          identities=True, on_commit=self._committed)
        self.assembler = Assembler(segment)
        self.staged_parts: Dict[str, List[str]] = {}    # {video: its segments' parts written, uncommitted}
        self.output, self.schema, self.run_id = output, schema, run_id
        self.staged = 0          # segment parts written (named apart from the part writer's)
        self.counts = {"videos_ok": 0, "videos_failed": 0, "rows_written": 0, "snippets": 0, "frames": 0}
        self.pace, self.decoders, self.precisions, self.failures = _Pace(), set(), set(), []
        self.encoder_nodes: set = set()
        self.gpu_encoders: set = set()       # encoders that held a GPU Ray gave them
        self.node = ray.get_runtime_context().get_node_id()
        self.lock = threading.Lock()
        self.ticker = Ticker(self._tick, min(1.0, flush_seconds / 4) if flush_seconds else 1.0, self.lock)

    def _tick(self) -> None:
        self.fw.tick()
        self.ew.tick()
        if self.scorer is not None:
            self.scorer.tick()

    def _committed(self, rows: List[Dict[str, Any]]) -> None:
        """A part of rows (or of error rows) is committed: only now do they count."""
        for r in rows:
            if "error" in r:
                self.counts["videos_failed"] += 1
                self.failures.append(r["error"])
                continue
            self.counts["rows_written"] += 1
            if r["crop"] == 0:
                self.counts["videos_ok"] += 1
                self.counts["snippets"] += int(r.get("video_snippets") or r["snippet_count"])
                self.counts["frames"] += int(r["num_frames"])

    def add(self, cols: Dict[str, np.ndarray]) -> int:
        with self.lock:
            self.ticker.raise_error()     # a timed flush failed: the write task fails, Ray retries it
            for i in range(len(cols["video_id"])):
                self._row({k: v[i] for k, v in cols.items()})
            self._tick()
        return len(cols["video_id"])

    def _row(self, row: Dict[str, Any]) -> None:
        """One encoded chunk: noted, then assembled; what assembling completes is scored
        (``score --videos``) and written (:meth:`_segment`, :meth:`_video`)."""
        self._note(row)
        vid = str(row["video_id"])
        if vid in self.dead or vid in self.assembled:
            return          # buffered or committed already (a retried task delivers chunks again)
        if row["error"]:
            self.dead.add(vid)
            self.assembler.drop(vid)     # segments it staged stay uncommitted; the next run removes them
            self.staged_parts.pop(vid, None)
            if self.scorer is not None:
                self.scorer.streams.pop(vid, None)
            self.ew.add([{"path": row["path"], "video_id": vid, "stage": "extract", "error": str(row["error"]),
                          "input_identity": row["input_identity"]}])
            return
        for piece in self.assembler.add(vid, row):
            if isinstance(piece, Segment):
                self._segment(piece)
            else:
                self.assembled.add(vid)
                self._video(piece)

    def _note(self, row: Dict[str, Any]) -> None:
        """What the run summary says of the stages a chunk went through (``stage_perf``)."""
        self.pace.row(row)
        if row.get("decoder"):
            self.decoders.add(str(row["decoder"]))
        if not row["error"]:
            enc = row["stage_perf"]["encode"]
            self.precisions.add(str(enc["precision"]))
            self.encoder_nodes.add(str(enc["node"]))
            if int(enc.get("gpus") or 0) > 0:
                self.gpu_encoders.add(str(enc["worker"]))

    def _video(self, w: "Whole") -> None:
        """A whole video (a long recording: its last segment): its rows, one per crop, with
        its earlier segments' parts, in one commit; then scored."""
        meta, feats, staged = w.meta, w.feats, self.staged_parts.pop(w.vid, [])
        rows = _crop_rows(w.vid, meta, feats, snippet_times=meta["snippet_times"],
                          frames_listed=int(meta.get("frames_listed") or 0) or None,
                          snippet_start=w.start if staged else None)
        for r in rows:      # the whole recording's snippets, for the committed counts
            r["video_snippets"] = w.start + feats.shape[0]
        self.fw.add(rows, whole=True, staged=staged)
        if self.scorer is not None:
            self.scorer.video(w.vid, meta, feats, snippets=w.start + feats.shape[0])
        if staged:
            del feats, w
            give_back_memory()

    def _segment(self, seg: "Segment") -> None:
        """A long recording's next snippets, as a part without a commit marker (readers never
        count it alone; the video's last part commits it); then scored as they come."""
        from vadclip.io.parts import write_part

        rows = _crop_rows(seg.vid, seg.row, seg.feats, snippet_start=seg.start)
        name = f"part-{self.run_id}-s{self.staged:05d}.parquet"
        if self.fw.guard is not None:
            self.fw.guard()
        write_part(self.output.rows_dir, name, pa.Table.from_pylist(rows, schema=with_identities(self.schema)),
                   commit=False)
        del rows        # written: gone before the segment is scored
        self.staged += 1
        self.staged_parts.setdefault(seg.vid, []).append(name)
        if self.scorer is not None:
            self.scorer.segment(seg.vid, seg.feats, seg.row["path"])
        seg.feats = None
        give_back_memory()

    def progress(self) -> Dict[str, int]:
        """What this incarnation has committed so far (for the driver's progress line)."""
        return {"ok": self.counts["videos_ok"], "failed": self.counts["videos_failed"]}

    def finish(self) -> Dict[str, Any]:
        """Write what is buffered; the videos still missing chunks (their other chunks
        died with an earlier incarnation) are returned for the driver to run again."""
        with self.lock:
            self.ticker.stop()
            self.ticker.raise_error()
            self.fw.flush()
            self.ew.flush()
            scores = self.scorer.finish() if self.scorer is not None else None
            return {**self.counts, "scores": scores, "spans": self.pace.spans, "decoders": sorted(self.decoders),
                    "precisions": sorted(self.precisions), "node": self.node, "encoder_nodes": sorted(self.encoder_nodes),
                    "gpu_encoders": sorted(self.gpu_encoders),
                    "failures": self.failures[:1000], "parts": self.fw.parts, "staged": self.staged,
                    "incomplete": self.assembler.incomplete()}


class VideoSink(Sink):
    """The extraction pipeline's last step (:class:`vadclip.jobs.runner.Sink`): a Ray Data
    ``Datasink`` whose write tasks (on the workers) send each chunk row to the
    :class:`VideoWriter` owning its video, which assembles the video, scores it
    (``score --videos``) and commits it whole.  The writers are restartable actors placed
    on worker nodes as they come (:func:`vadclip.jobs.output.helper_placement`); after the
    round the runner collects what they did.  ``progress_of``: (videos in the plan, done
    before this round), for the progress lines."""

    def __init__(self, output: ResumableOutput, schema, run_id: str, rows_per_file: int,
                 flush_seconds: Optional[float], n: int, scorer=None, skip_scores=(), segment: int = 8192,
                 progress_of=(0, 0)) -> None:
        import ray

        actor = ray.remote(VideoWriter)
        self.writers = [actor.options(**helper_placement(spread=True)).remote(
            output, schema, f"{run_id}-w{i:03d}", rows_per_file, flush_seconds, scorer, list(skip_scores), segment)
            for i in range(n)]
        self.progress_of = progress_of
        # the write tasks only hand each chunk to its writer actor: they reserve no CPU, so
        # the decode tasks and encoders, which hold a node's CPUs, never keep them waiting
        # (with one CPU each, a day-long recording's chunks all reached the writers after
        # its decode task ended, and waited in the object store meanwhile); two per writer
        # at most (unbounded, each block of a chunk started a worker process of its own:
        # 375 snippets in chunks of 8 took 49.6 s against 13.3 s)
        self.write_args = {"ray_remote_args": {"num_cpus": 0}, "concurrency": 2 * n}

    def watch(self, log):
        return Progress(self, *self.progress_of, log).stop

    def datasink(self):
        from ray.data import Datasink

        writers = self.writers

        class _ToWriters(Datasink):
            def get_name(self) -> str:
                return "ToVideoWriters"

            def write(self, blocks, ctx) -> int:
                import ray

                refs = []
                for block in blocks:
                    cols = block_columns(block)
                    if not cols:
                        continue
                    owner = np.asarray([shard_of(v, len(writers)) for v in cols["video_id"]])
                    for w in np.unique(owner):
                        sel = np.flatnonzero(owner == w)
                        refs.append(writers[int(w)].add.remote({k: v[sel] for k, v in cols.items()}))
                return sum(ray.get(refs))

        return _ToWriters()

    def progress(self, timeout: float = 10.0) -> Optional[Dict[str, int]]:
        """The writers' committed counts summed (None when they do not answer in time:
        a writer being restarted)."""
        import ray

        try:
            got = ray.get([w.progress.remote() for w in self.writers], timeout=timeout)
        except Exception:  # noqa: BLE001 - a progress line is never worth failing a job
            return None
        return {k: sum(g[k] for g in got) for k in ("ok", "failed")}

    def finish(self) -> List[Dict[str, Any]]:
        """Every writer flushes and reports (a writer that died meanwhile is restarted by
        Ray and reports what its new incarnation holds); then they end."""
        import ray

        try:
            return ray.get([w.finish.remote() for w in self.writers])
        finally:
            end_actors(self.writers)


class Progress:
    """One line at most every ``every`` seconds (``VADCLIP_PROGRESS_S``, default 60) on
    the job's log — what a submitted job, whose stderr is no terminal, shows between
    its start and its end: videos done of the total, failures, rate and time left, from
    the counts the writers report (a few numbers; no bytes reach the driver)."""

    def __init__(self, sink: "VideoSink", total: int, before: int, log, every: Optional[float] = None):
        import os
        import threading
        import time

        self.sink, self.total, self.before, self.log = sink, total, before, log
        self.every = float(os.environ.get("VADCLIP_PROGRESS_S", "60")) if every is None else every
        self.t0, self._stop = time.time(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import time

        while not self._stop.wait(self.every):
            c = self.sink.progress()
            if c is None:
                continue
            done, dt = c["ok"] + c["failed"], time.time() - self.t0
            rate = done / dt * 60 if dt > 0 else 0.0
            left = self.total - self.before - done
            eta = f"{left / rate:.0f} min left" if rate > 0 else "time left unknown"
            self.log(f"[extract] progress: {self.before + done}/{self.total} videos ({c['failed']} failed), "
                     f"{rate:.1f} videos/min, {eta}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
