"""What a job is made of: typed stages (:class:`Stage`), each declaring on itself what a
worker of it reserves (:class:`Resources`), loading what it needs once in ``setup()`` and
working in ``__call__``; :func:`run_stages` puts a list of them on a Ray Data dataset.
Here too are the extraction pipeline's options and its two stages: decode (tasks: one
manifest row → the video's snippet frames in chunks) and encode (an actor pool running
the frozen CLIP image tower).  Scoring's stage is :class:`vadclip.jobs.score.ScoreStage`."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np

from vadclip.clip.encoder import ClipImageEncoder
from vadclip.io.features import meta_of
from vadclip.model.config import ClipSpec
from vadclip.options import option
from vadclip.video.decode import (VideoError, decoder_for, fetched, identity_of, in_place, iter_snippet_chunks,
                                  video_file)


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage reserves.  ``actors`` > 0: a pool of that many actors,
    each set up once; 0: tasks, each setting the stage up before its first input.
    ``batch_size`` None: the stage takes one row and yields rows (Ray Data's
    ``flat_map``); else it takes batches of that many rows as numpy columns and returns
    columns or an Arrow table (``map_batches``)."""
    cpus: float = 1.0
    gpus: float = 0.0
    actors: int = 0
    batch_size: Optional[int] = None


class Stage:
    """One step of a job (as NeMo Curator's ``ProcessingStage``): :meth:`resources` says
    what a worker of it reserves, :meth:`setup` loads what it needs (a model, weights) in
    the worker, once, and ``__call__`` works.  A stage is built on the driver from its
    options alone and travels to its workers as it is."""

    def resources(self) -> Resources:
        return Resources()

    def setup(self) -> None:
        """Load what the work needs, in the worker (nothing by default)."""

    def __call__(self, rows):   # pragma: no cover - each stage says what it does
        raise NotImplementedError


class _OnWorker:
    """A stage in a Ray Data worker: set up once (an actor: when the pool starts it),
    then called.  :func:`_worker_of` names a subclass after the stage, so Ray's operators,
    actors and processes carry the stage's name (``MapBatches(EncodeStage)``)."""

    def __init__(self, stage: Stage, now: bool = True) -> None:
        self.stage, self.ready = stage, False
        if now:
            self._setup()

    def _setup(self) -> None:
        self.stage.setup()
        self.ready = True

    def __call__(self, rows):
        if not self.ready:
            self._setup()
        return self.stage(rows)


def _worker_of(stage: Stage) -> type:
    return type(type(stage).__name__, (_OnWorker,), {"__module__": __name__})


def run_stages(ds, stages: Sequence[Stage]):
    """``ds`` through ``stages`` in order, each with the resources it declares."""
    for stage in stages:
        r = stage.resources()
        worker = _worker_of(stage)
        kw: Dict[str, Any] = {"num_cpus": r.cpus, "num_gpus": r.gpus}
        if r.actors:
            from ray.data import ActorPoolStrategy

            fn = worker
            kw.update(fn_constructor_args=(stage,), compute=ActorPoolStrategy(size=r.actors))
        else:
            fn = worker(stage, now=False)
        if r.batch_size is None:
            ds = ds.flat_map(fn, **kw)
        else:
            ds = ds.map_batches(fn, batch_size=r.batch_size, batch_format="numpy", **kw)
    return ds


ENCODE = "video decoding and CLIP encoding"
OUTPUT = "output parts (resume keeps every part already written)"


@dataclass
class ExtractOptions:
    """How videos become features (the command line's flags are these fields)."""
    clip: ClipSpec = option(default_factory=ClipSpec, cli=False,
                            help="the frozen CLIP, as in the model config (flags: --clip-model, --clip-pretrained)")
    snippet_len: int = option(16, help="frames per snippet (one frame encoded per snippet)")
    crops: int = option(1, choices=[1, 5, 10], group=ENCODE,
                        help="views per frame: 1 (centre) or 5/10 (centre, 4 corners[, flipped])")
    batch_size: int = option(64, group=ENCODE, help="images per encoder forward pass")
    precision: str = option("auto", choices=["auto", "fp32", "fp16", "bf16"], group=ENCODE,
                            help="encoder precision (default auto: fp16 on a GPU; on a CPU bf16 where it has native "
                                 "bf16 and a timing at start-up finds it faster, else fp32; the run summary says which)")
    num_encoders: int = option(1, group=ENCODE, help="size of the encoder actor pool")
    device: str = option("auto", choices=["auto", "cpu", "cuda"], group=ENCODE,
                         help="where the encoders run: cuda asks every encoder for a GPU (on an autoscaling cluster "
                              "the demand launches GPU nodes); cpu never; auto (default) GPUs when the cluster has "
                              "them or its autoscaler can launch them, else the CPU (said once)")
    gpus_per_encoder: Optional[float] = option(None, group=ENCODE,
                                               help="GPUs per encoder actor when encoding on GPUs (default 1, or 0.5 "
                                                    "with --decode-device cuda)")
    # Ray pins an actor that reserves one CPU to one thread; the encoder is the
    # bottleneck (decode tasks mostly wait on backpressure), so by default it gets the
    # node's cores shared by the pool
    encoder_threads: Optional[int] = option(None, group=ENCODE,
                                            help="CPU-only: torch threads per encoder actor (default: the node's "
                                                 "cores / --num-encoders)")
    decoder: str = option("auto", choices=["auto", "decord", "torchcodec", "pyav"], group=ENCODE,
                          help="video decoder (default auto: torchcodec where FFmpeg's shared libraries are "
                               "installed, the fastest on the CPU; decord elsewhere; both give the same frames; "
                               "MPEG-TS/PS files (.ts .m2ts .mts .mpg .mpeg .vob) in order with PyAV). A file the "
                               "decoder cannot read goes to the next: torchcodec, decord, PyAV")
    copy_max_mb: float = option(1000.0, group=ENCODE,
                                help="with --decoder auto, a video in object storage larger than this many MB is "
                                     "decoded where it lies (in order, with PyAV, through range requests) rather than "
                                     "copied whole to node-local scratch first, so no decode task needs more scratch "
                                     "than this whatever a recording's size; 0: always copy")
    decode_device: str = option("cpu", choices=["cpu", "cuda"], group=ENCODE,
                                help="cuda: decode on the GPU (torchcodec's NVDEC decoder), in decode tasks that "
                                     "reserve --decode-gpus each; the CPU where there is no GPU or NVDEC cannot "
                                     "read a file")
    decode_gpus: float = option(0.1, group=ENCODE,
                                help="with --decode-device cuda: the GPU share each decode task reserves "
                                     "(an encoder then takes 0.5 GPU unless --gpus-per-encoder says otherwise)")
    stall_timeout_s: float = option(600.0, group=ENCODE,
                                    help="a video whose reading and decoding makes no progress for this long (no "
                                         "bytes read, no packet demuxed, no frame decoded: a stalled read or "
                                         "decoder) becomes an error row naming the deadline and the job goes on; a "
                                         "slow but progressing recording always finishes; 0: never")
    video_timeout_s: float = option(0.0, group=ENCODE,
                                    help="a deadline on a video's whole reading and decoding, progress or not "
                                         "(default 0: none, so a day-long recording is never failed for its "
                                         "length)")
    rows_per_file: int = option(256, group=OUTPUT, help="at most this many rows per Parquet part file")
    segment_snippets: int = option(8192, group=OUTPUT,
                                   help="a recording longer than this many snippets (8192: 87 min at 25 fps) is "
                                        "written in rows of half as many, committed together with its last, so a "
                                        "writer holds one such segment of a day-long recording, never all of it, "
                                        "and never more than a recording it writes whole")
    flush_seconds: float = option(60.0, group=OUTPUT,
                                  help="write finished rows at least this often, so an interrupted job keeps its work")
    wait: float = option(0.0, group=OUTPUT,
                         help="seconds to wait for a live run that holds the output folder (another scan of the same "
                              "archive still running), saying who holds it; default 0: stop at once in one line "
                              "(exit 2), changing nothing. A run whose driver is gone is taken over, never waited for")
    num_writers: Optional[int] = option(None, group=OUTPUT,
                                        help="writer actors assembling videos and writing parts, on the worker nodes "
                                             "(default: one per encoder)")

    @property
    def chunk_snippets(self) -> int:
        return max(1, self.batch_size // self.crops)


NO_TIMES = {"snippets": 0, "frames_listed": 0, "times": np.zeros(0, np.float64)}   # an error row's


class DecodeStage(Stage):
    """Tasks, one manifest row each → the video's snippet frames in
    chunks of ``opts.chunk_snippets`` ([n, crops, 3, S, S] uint8 each), or one error row.

    A problem of the video (missing, empty, unreadable, truncated) is an error row; any
    other exception (decord missing, out of memory, a failing store) is the
    environment's: it propagates, Ray retries the task, and if it persists the job
    fails — no video is marked failed because of it.  A video in object storage is
    streamed to this node's scratch and removed after, or, larger than ``--copy-max-mb``
    (or an MPEG-TS/PS export), decoded where it lies.  ``device`` is where to decode
    (cuda where the task holds ``gpus`` of a GPU, :meth:`gpus`); each row names the decoder used."""

    def __init__(self, opts: ExtractOptions, image_size: int, gpus: float = 0.0) -> None:
        self.opts, self.size, self.share = opts, image_size, gpus
        self.device = "cuda" if gpus else "cpu"

    def resources(self) -> Resources:
        # one decode thread per task (num_threads=1 / num_ffmpeg_threads=1)
        return Resources(cpus=1.0, gpus=self.share)

    where: Optional[Dict[str, str]] = None

    def setup(self) -> None:
        self.where = _where()

    def _perf(self, start: float) -> Dict[str, Any]:
        """A row's ``stage_perf``: where and when this task decoded it (its chunk)."""
        if self.where is None:
            self.setup()
        return {"decode": dict(self.where, start=start, end=time.time())}

    @staticmethod
    def gpus(opts: ExtractOptions, have_gpus: bool) -> float:
        """The GPU share a decode task reserves: ``--decode-gpus`` when decoding on the
        GPU of a cluster that has GPUs, else none."""
        return opts.decode_gpus if opts.decode_device == "cuda" and have_gpus else 0.0

    def __call__(self, item: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        opts = self.opts
        # the manifest's columns (camera, site, start_time) as a dict: an Arrow struct between the stages
        base = {"video_id": item["video_id"], "path": item["path"], "label": item["label"] or "",
                "input_identity": "", "meta": meta_of(item.get("meta"))}
        empty = np.zeros((0, opts.crops, 3, self.size, self.size), np.uint8)
        began = time.time()
        rows = self._rows(item, base, empty)
        if not opts.video_timeout_s and not opts.stall_timeout_s:
            yield from rows
            return
        try:
            yield from within_deadline(rows, opts.stall_timeout_s, opts.video_timeout_s)
        except DeadlineExceeded as e:
            yield dict(base, chunk=-1, n_chunks=0, fps=0.0, num_frames=0, frames=empty, decoder="", **NO_TIMES,
                       error=f"{item['path']}: {e}; the job went on without it (--retry-failed runs it again)",
                       stage_perf=self._perf(began))

    def _rows(self, item: Dict[str, Any], base: Dict[str, Any], empty: np.ndarray) -> Iterator[Dict[str, Any]]:
        opts = self.opts
        try:
            st = video_file(item["path"])
            base["input_identity"] = identity_of(st)    # re-running extracts the video again if this changes
            decoder = decoder_for(item["path"], opts.decoder, getattr(st, "size", None), opts.copy_max_mb * 1e6)
            with fetched(item["path"], st, in_place=in_place(item["path"], decoder, self.device)) as local:
                base["meta"] = with_recording_start(base["meta"], local)
                info, chunks = iter_snippet_chunks(local, opts.snippet_len, self.size, opts.crops,
                                                   opts.chunk_snippets, name=item["path"], decoder=decoder,
                                                   device=self.device)
                n_chunks = -(-info.snippet_count(opts.snippet_len) // opts.chunk_snippets)
                began = time.time()     # each chunk's decode span: from the last one handed on
                for k, frames in enumerate(chunks):
                    # the last chunk's values are the video's (a truncation shows by then):
                    # the frames that decode, their rate, the snippets they make and, for a
                    # variable-frame-rate file, where each snippet starts (seconds; none: empty)
                    times = info.snippet_times(opts.snippet_len) if k == n_chunks - 1 else None
                    yield dict(base, chunk=k, n_chunks=n_chunks, fps=info.fps, num_frames=info.num_frames,
                               frames=frames, error="", decoder=info.decoder,
                               snippets=info.snippet_count(opts.snippet_len), frames_listed=info.frames_listed,
                               times=np.asarray(times or (), np.float64), stage_perf=self._perf(began))
                    began = time.time()
        except VideoError as e:
            yield dict(base, chunk=-1, n_chunks=0, fps=0.0, num_frames=0, frames=empty, error=str(e), decoder="",
                       **NO_TIMES, stage_perf=self._perf(time.time()))


def with_recording_start(meta: Dict[str, Any], local: str) -> Dict[str, Any]:
    """A video's ``meta`` with ``start_time`` from its container's ``creation_time``
    (``start_time_from: container``) when its manifest gave none: its events then get
    wall-clock times too.  A manifest's ``start_time`` always wins."""
    from vadclip.video.decode import recording_start

    if meta.get("start_time"):
        return meta
    t = recording_start(local)
    if t is None:
        return meta
    return dict(meta, start_time=t, start_time_from="container")


class DeadlineExceeded(Exception):
    """A video's rows did not come within its deadline (the message says which)."""


def within_deadline(rows: Iterator[Dict[str, Any]], stall_s: float = 0.0,
                    total_s: float = 0.0) -> Iterator[Dict[str, Any]]:
    """``rows``, made in a thread of their own, as long as that thread makes progress
    (:mod:`vadclip.io.progress`: bytes copied, packets demuxed, frames decoded, a row
    made) at least every ``stall_s`` seconds, and, with ``total_s``, as long as making
    them takes at most that in all.  Only the time this generator waits counts, never
    the time its consumer holds it back.  Past a deadline it raises
    :class:`DeadlineExceeded` and leaves the stalled thread behind (a read blocked in a
    C library cannot be interrupted; it ends with its call, or with the worker).
    Exceptions of ``rows`` are raised here."""
    import queue
    import threading

    from vadclip.io.progress import Heartbeat, watching

    q: "queue.Queue" = queue.Queue(maxsize=2)      # chunks are large: at most two wait
    stop, end = threading.Event(), object()
    heart = Heartbeat()

    def produce():
        try:
            with watching(heart):
                for r in rows:
                    heart()
                    while not stop.is_set():
                        try:
                            q.put((r, None), timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            q.put((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((None, e))

    threading.Thread(target=produce, daemon=True, name="vadclip-decode").start()
    waited, poll = 0.0, 1.0 if not stall_s else min(1.0, stall_s / 4)
    try:
        while True:
            t = time.monotonic()
            while True:
                left = total_s - waited - (time.monotonic() - t) if total_s else poll
                try:
                    r, err = q.get(timeout=max(0.0, min(poll, left)))
                    break
                except queue.Empty:
                    now = time.monotonic()
                    # the stall clock: from the last progress, or from when this wait began (while
                    # the consumer held the generator back, the producer could only wait for it)
                    if stall_s and now - max(heart.last, t) > stall_s:
                        raise DeadlineExceeded(f"reading and decoding made no progress for {stall_s:g} s "
                                               "(--stall-timeout-s): a stalled read or decoder") from None
                    if total_s and waited + now - t > total_s:
                        raise DeadlineExceeded(f"reading and decoding took longer than the deadline of "
                                               f"{total_s:g} s (--video-timeout-s)") from None
            waited += time.monotonic() - t
            if err is not None:
                raise err
            if r is end:
                return
            yield r
    finally:
        stop.set()


def _where() -> Dict[str, str]:
    """The worker (host:pid) and Ray node a stage runs on, as each row's ``stage_perf`` names them."""
    import socket

    import ray

    # outside Ray (a stage called by hand) no node: asking would start, or connect to, a cluster
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "node": node}


def _objects(values) -> np.ndarray:
    """A numpy column of Python objects (dicts: Ray Data makes them an Arrow struct column)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class EncodeStage(Stage):
    """An actor pool (``--num-encoders``): decoded chunks → CLIP image features
    ([n, crops, D] float32 per row); error rows pass through.  An encoder failure
    (CUDA error, out of memory, its node lost) is the environment's: Ray Data restarts
    the actor and retries the batch (its defaults: without limit).  ``weights``: the job's
    :class:`vadclip.clip.weights.Weights`, shared through Ray; ``gpus``: the share of a GPU
    an encoder holds (:meth:`gpus`)."""

    def __init__(self, opts: ExtractOptions, weights=None, gpus: float = 0.0) -> None:
        self.opts, self.weights, self.share = opts, weights, gpus

    def resources(self) -> Resources:
        return Resources(cpus=0 if self.share else 1, gpus=self.share, actors=self.opts.num_encoders, batch_size=1)

    def setup(self) -> None:
        import torch

        from vadclip.clip.weights import activate

        opts = self.opts
        import ray

        # the GPUs Ray gave this actor; a GPU actor without CUDA fails clearly
        self.gpus_held = len(ray.get_gpu_ids()) if self.share else 0
        if self.share and not torch.cuda.is_available():
            from vadclip.errors import EnvironmentProblem

            raise EnvironmentProblem(f"encoder on node {ray.get_runtime_context().get_node_id()[:12]} holds a GPU "
                                     "but CUDA is not available there (driver, image or CUDA build of torch)")
        activate(self.weights)     # the job's CLIP weights, from this node or Ray's object store
        if not torch.cuda.is_available():
            # Ray pins an actor that reserves one CPU to one thread; the encoder is the
            # bottleneck, so it gets the node's cores shared by the pool
            n = opts.encoder_threads or max(1, (os.cpu_count() or 1) // max(1, opts.num_encoders))
            torch.set_num_threads(int(n))
        self.enc = ClipImageEncoder(opts.clip, opts.precision)
        self.where = _where()

    @staticmethod
    def gpus(opts: ExtractOptions, have_gpus: bool) -> float:
        """The GPU share an encoder actor reserves: ``--gpus-per-encoder``, else a whole
        GPU, or half of one when the decode tasks decode on the GPU too; none without GPUs."""
        if opts.gpus_per_encoder is not None:
            return opts.gpus_per_encoder
        return (0.5 if DecodeStage.gpus(opts, have_gpus) else 1.0) if have_gpus else 0.0

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        feats, errors, t0s, t1s = [], [], [], []
        for frames, err, path, vid in zip(batch["frames"], batch["error"], batch["path"], batch["video_id"]):
            t0s.append(time.time())
            if err or len(frames) == 0:
                feats.append(np.zeros((0, self.opts.crops, self.enc.embed_dim), np.float32))
                errors.append(err or f"{path}: no frames decoded")
            else:
                feats.append(self.enc.encode(np.asarray(frames)))
                errors.append("")
            t1s.append(time.time())
        out = {k: v for k, v in batch.items() if k not in ("frames", "error", "stage_perf")}
        # where and when this encoder worked on each row, beside the decode task's span: the
        # run's start-up, each encoder's busy fraction and pace (jobs.writers._Pace)
        out["stage_perf"] = _objects([dict(p, encode=dict(self.where, gpus=self.gpus_held, precision=self.enc.precision,
                                                          start=t0, end=t1))
                                      for p, t0, t1 in zip(batch["stage_perf"], t0s, t1s)])
        out["error"] = np.asarray(errors, dtype=object)
        out["features"] = np.asarray(feats + [None], dtype=object)[:-1]  # ragged → object array
        return out
