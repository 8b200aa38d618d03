"""Raw videos → CLIP snippet features in Parquet, as a streaming Ray Data job.

Pipeline: manifest rows → ``flat_map`` decode tasks (torchcodec or decord, on the CPU,
or torchcodec's NVDEC decoder with ``decode_device="cuda"``; one frame per snippet;
resize + crop; bounded chunks of snippets) → CLIP image-encoder actor pool
(``ActorPoolStrategy``; ``num_gpus`` when the cluster has GPUs; fp16/bf16 there) →
the driver stitches each video's chunks and writes finished videos to Parquet part
files (committed parts, :mod:`vadclip.io.parts`).  Videos and outputs may be local or in
object storage (:mod:`vadclip.io.storage`); a remote video is streamed to the decode
task's node-local scratch, never through the driver.  A failure of one video becomes
a row of the errors table; re-running skips videos already written (and, unless
asked, videos already failed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from vadclip.io import provenance, storage
from vadclip.model.config import ClipSpec
from vadclip.options import option
from vadclip.errors import InputError, MissingInputError
from vadclip.io.ids import video_id
from vadclip.io.features import ERROR_SCHEMA, FEATURE_SCHEMA, feature_row
from vadclip.io import layout
from vadclip.io.parts import drop_rows
from vadclip.io.tables import read_records
from vadclip.jobs.faults import exit_once
from vadclip.jobs.output import ResumableOutput, Ticker, block_columns, placements, shard_of
from vadclip.video.decode import (VideoError, check_decoder, fetched, identity_of, iter_snippet_chunks, list_videos,
                    torchcodec_missing, video_file)

log = logging.getLogger(__name__)


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
    gpus_per_encoder: Optional[float] = option(None, group=ENCODE,
                                               help="GPUs per encoder actor (default: 1 if the cluster has GPUs, else 0)")
    # Ray pins an actor that reserves one CPU to one thread; the encoder is the
    # bottleneck (decode tasks mostly wait on backpressure), so by default it gets the
    # node's cores shared by the pool
    encoder_threads: Optional[int] = option(None, group=ENCODE,
                                            help="CPU-only: torch threads per encoder actor (default: the node's "
                                                 "cores / --num-encoders)")
    decoder: str = option("auto", choices=["auto", "decord", "torchcodec"], group=ENCODE,
                          help="video decoder (default auto: torchcodec where FFmpeg's shared libraries are "
                               "installed, the fastest on the CPU; decord elsewhere; both give the same frames)")
    decode_device: str = option("cpu", choices=["cpu", "cuda"], group=ENCODE,
                                help="cuda: decode on the GPU (torchcodec's NVDEC decoder), in decode tasks that "
                                     "reserve --decode-gpus each; the CPU where there is no GPU or NVDEC cannot "
                                     "read a file")
    decode_gpus: float = option(0.1, group=ENCODE,
                                help="with --decode-device cuda: the GPU share each decode task reserves "
                                     "(an encoder then takes 0.5 GPU unless --gpus-per-encoder says otherwise)")
    rows_per_file: int = option(256, group=OUTPUT, help="at most this many rows per Parquet part file")
    flush_seconds: float = option(60.0, group=OUTPUT,
                                  help="write finished rows at least this often, so an interrupted job keeps its work")
    num_writers: Optional[int] = option(None, group=OUTPUT,
                                        help="writer actors assembling videos and writing parts, on the worker nodes "
                                             "(default: one per encoder)")
    max_restarts: int = option(3, cli=False, help="encoder actor deaths tolerated (restarted, batch retried), "
                                                  "then the job fails")

    @property
    def chunk_snippets(self) -> int:
        return max(1, self.batch_size // self.crops)


# ---------------------------------------------------------------------------- manifest
def load_manifest(source: str) -> List[Dict[str, Optional[str]]]:
    """Videos to process from a CSV/Parquet manifest (``path`` [, ``label``, ``video_id``];
    relative paths are relative to the manifest), a directory (searched recursively) or
    a glob pattern — each local or in object storage, and so may be the videos.
    Labels are optional (an unlabeled archive is scored as is).  A path
    listed twice is kept once (an error if its labels differ); different paths with the
    same id get a short hash of the path appended to the id."""
    source = storage.absolute(source)
    if storage.isdir(source):
        recs = [{"path": p} for p in list_videos(source)]
        if not recs:
            raise MissingInputError(f"{source}: no video files under this directory")
    elif source.lower().endswith((".csv", ".parquet")):
        recs = read_records(source, "manifest")
        if recs and "path" not in recs[0]:
            raise InputError(f"{source}: manifest needs a 'path' column, has {sorted(recs[0])}")
        base = storage.dirname(source)
        for r in recs:
            p = str(r["path"])
            r["path"] = p if storage.is_uri(p) or p.startswith("/") else storage.join(base, p)
    else:
        paths = storage.glob(source)
        if not paths:
            raise MissingInputError(f"no videos match {source!r}")
        recs = [{"path": p} for p in paths]
    out, seen, by_path = [], {}, {}
    for r in recs:
        path = storage.absolute(str(r["path"]))
        label = r.get("label")
        label = None if label is None or str(label) == "" else str(label)
        if path in by_path:  # listed twice: one row per distinct video
            if by_path[path]["label"] != label:
                raise InputError(f"{source}: {path} is listed twice with different labels "
                                 f"({by_path[path]['label']!r} and {label!r})")
            continue
        vid = str(r.get("video_id") or video_id(path))
        if vid in seen and seen[vid] != path:
            vid = f"{vid}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        seen[vid] = path
        by_path[path] = {"path": path, "video_id": vid, "label": label}
        out.append(by_path[path])
    if len(out) < len(recs):
        log.warning("%s: %d duplicate entries ignored (one row per distinct video)", source, len(recs) - len(out))
    return out


# ----------------------------------------------------------------------------- encoder
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}   # x86 (AVX-512 BF16, AMX), arm64 (FEAT_BF16)


def cpu_bf16_flags() -> List[str]:
    """The CPU's native bf16 instructions, as Linux names them in /proc/cpuinfo (none
    elsewhere, or where the CPU has none: bf16 is then emulated, slower than fp32)."""
    try:
        with open("/proc/cpuinfo") as fh:
            words = {w for line in fh if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    except OSError:
        return []
    return sorted(words & BF16_CPU_FLAGS)


_cpu_choice: Dict[Any, Any] = {}


def cpu_precision(visual, image_size: int, key: Any) -> Any:
    """``(precision, why)`` for the image tower ``visual`` on this CPU at torch's current
    thread count: bf16 where the CPU has native bf16 *and* the tower itself, timed on
    two images in fp32 and in a bf16 copy (alternating, best of three, after a
    warm-up), runs at least 1.1x faster in bf16; fp32 elsewhere (emulated bf16, or a
    model too small to gain).  About three seconds for ViT-B-16 on two cores, once per
    process, thread count and ``key`` (the model: the weights do not change the speed)."""
    import copy

    import torch

    key = (torch.get_num_threads(), key)
    if key in _cpu_choice:
        return _cpu_choice[key]
    flags = cpu_bf16_flags()
    if not flags:
        choice = ("fp32", "no native bf16 on this CPU")
    else:
        x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        towers = {torch.float32: visual, torch.bfloat16: copy.deepcopy(visual).to(torch.bfloat16)}

        def timed(dtype, reps: int) -> float:
            xx = x.to(dtype)
            with torch.inference_mode():
                t = time.perf_counter()
                for _ in range(reps):
                    towers[dtype](xx)
            return time.perf_counter() - t

        for dtype in towers:       # warm-up
            timed(dtype, 1)
        reps = 1                   # a small model repeats until a pass takes 50 ms, so the timing means something
        while timed(torch.float32, reps) < 0.05 and reps < 4096:
            reps *= 2
        best = {dtype: float("inf") for dtype in towers}
        for _ in range(3):         # alternating, best of three
            for dtype in towers:
                best[dtype] = min(best[dtype], timed(dtype, reps))
        speed = best[torch.float32] / max(best[torch.bfloat16], 1e-9)
        choice = ("bf16" if speed >= 1.1 else "fp32",
                  f"native bf16 ({', '.join(flags)}); this encoder timed {speed:.2f}x as fast in bf16 as in fp32 "
                  f"on {key[0]} threads")
    _cpu_choice[key] = choice
    return choice


class ClipImageEncoder:
    """Frozen open_clip image encoder on uint8 crops [n, crops, 3, S, S] → [n, crops, D]."""

    def __init__(self, spec: ClipSpec, precision: str = "auto", device: Optional[str] = None) -> None:
        import torch

        from vadclip.clip.backbone import FrozenCLIP

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.clip = FrozenCLIP(spec, device=self.device)
        self.precision_why = f"asked for {precision}"
        if precision == "auto":
            if self.device.startswith("cuda"):
                precision, self.precision_why = "fp16", "auto on a GPU"
            else:
                precision, self.precision_why = cpu_precision(self.clip.clip.visual, self.clip.image_size,
                                                              (spec.model, json.dumps(spec.kwargs, sort_keys=True)))
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.clip.to(self.dtype)
        # on a GPU: channels-last for the patch-embedding convolution; open_clip's attention
        # runs through scaled_dot_product_attention (flash/memory-efficient kernels in fp16/bf16)
        self.channels_last = self.device.startswith("cuda")
        if self.channels_last:
            self.clip.clip.visual.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(self.clip.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(self.clip.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.image_size = self.clip.image_size
        self.embed_dim = self.clip.embed_dim

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        import torch

        n, c = chunk.shape[:2]
        with torch.inference_mode():
            x = torch.from_numpy(np.require(chunk, requirements=["C", "W"])).to(self.device)
            x = x.reshape(n * c, *x.shape[2:]).float()
            x = ((x - self.mean) / self.std).to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            f = self.clip.encode_image(x).float()
        return f.reshape(n, c, -1).cpu().numpy()


# -------------------------------------------------------------------- ray data stages
class DecodeStage:
    """Ray Data ``flat_map`` stage: one manifest row → the video's snippet frames in
    chunks of ``opts.chunk_snippets`` ([n, crops, 3, S, S] uint8 each), or one error row.

    A problem of the video (missing, empty, unreadable, truncated) is an error row; any
    other exception (decord missing, out of memory, a failing store) is the
    environment's: it propagates, Ray retries the task, and if it persists the job
    fails — no video is marked failed because of it.  A video in object storage is
    streamed to this node's scratch and removed after.  ``device`` is where to decode
    (cuda only in tasks that reserved a GPU share); each row names the decoder used."""

    num_cpus = 1.0          # one decode thread per task (num_threads=1 / num_ffmpeg_threads=1)

    def __init__(self, opts: ExtractOptions, image_size: int, device: str = "cpu") -> None:
        self.opts, self.size, self.device = opts, image_size, device

    @staticmethod
    def gpus(opts: ExtractOptions, have_gpus: bool) -> float:
        """The GPU share a decode task reserves: ``--decode-gpus`` when decoding on the
        GPU of a cluster that has GPUs, else none."""
        return opts.decode_gpus if opts.decode_device == "cuda" and have_gpus else 0.0

    def __call__(self, item: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        opts = self.opts
        base = {"video_id": item["video_id"], "path": item["path"], "label": item["label"] or "",
                "input_identity": ""}
        empty = np.zeros((0, opts.crops, 3, self.size, self.size), np.uint8)
        try:
            st = video_file(item["path"])
            base["input_identity"] = identity_of(st)    # re-running extracts the video again if this changes
            with fetched(item["path"], st) as local:
                info, chunks = iter_snippet_chunks(local, opts.snippet_len, self.size, opts.crops,
                                                   opts.chunk_snippets, name=item["path"], decoder=opts.decoder,
                                                   device=self.device)
                n_chunks = -(-info.snippet_count(opts.snippet_len) // opts.chunk_snippets)
                for k, frames in enumerate(chunks):
                    yield dict(base, chunk=k, n_chunks=n_chunks, fps=info.fps, num_frames=info.num_frames,
                               frames=frames, error="", decoder=info.decoder)
        except VideoError as e:
            yield dict(base, chunk=-1, n_chunks=0, fps=0.0, num_frames=0, frames=empty, error=str(e), decoder="")


class EncodeStage:
    """Ray Data ``map_batches`` actor stage: decoded chunks → CLIP image features
    ([n, crops, D] float32 per row); error rows pass through.  An encoder failure
    (CUDA error, out of memory) is the environment's: the actor is restarted and the
    batch retried by Ray, up to ``opts.max_restarts`` times."""

    def __init__(self, opts: ExtractOptions, weights=None, exits=None) -> None:
        import torch

        from vadclip.clip.weights import activate

        self.opts, self.exits = opts, exits or []   # exits: fault injection (vadclip.jobs.faults)
        activate(weights)     # the job's CLIP weights, from this node or Ray's object store
        if not torch.cuda.is_available():
            # Ray pins an actor that reserves one CPU to one thread; the encoder is the
            # bottleneck, so it gets the node's cores shared by the pool
            n = opts.encoder_threads or max(1, (os.cpu_count() or 1) // max(1, opts.num_encoders))
            torch.set_num_threads(int(n))
        self.enc = ClipImageEncoder(opts.clip, opts.precision)
        import socket

        import ray

        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.node = ray.get_runtime_context().get_node_id()

    @staticmethod
    def gpus(opts: ExtractOptions, have_gpus: bool) -> float:
        """The GPU share an encoder actor reserves: ``--gpus-per-encoder``, else a whole
        GPU, or half of one when the decode tasks decode on the GPU too; none without GPUs."""
        if opts.gpus_per_encoder is not None:
            return opts.gpus_per_encoder
        return (0.5 if DecodeStage.gpus(opts, have_gpus) else 1.0) if have_gpus else 0.0

    @staticmethod
    def ray_args(opts: ExtractOptions, gpus: float, weights=None) -> Dict[str, Any]:
        """What one encoder actor needs, for ``map_batches`` (``weights``: the job's
        :class:`vadclip.clip.weights.Weights`, shared through Ray)."""
        from ray.data import ActorPoolStrategy

        from vadclip.jobs.faults import encoder_exits

        return {"fn_constructor_kwargs": {"opts": opts, "weights": weights, "exits": encoder_exits()},
                "batch_size": 1, "batch_format": "numpy",
                "compute": ActorPoolStrategy(size=opts.num_encoders), "num_gpus": gpus,
                "num_cpus": 0 if gpus else 1, "max_restarts": opts.max_restarts,
                "max_task_retries": opts.max_restarts}

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        feats, errors, t0s, t1s = [], [], [], []
        for frames, err, path, vid in zip(batch["frames"], batch["error"], batch["path"], batch["video_id"]):
            if self.exits:
                exit_once(self.exits, vid)    # fault injection (tests, bench/soak.py): this actor dies, once
            t0s.append(time.time())
            if err or len(frames) == 0:
                feats.append(np.zeros((0, self.opts.crops, self.enc.embed_dim), np.float32))
                errors.append(err or f"{path}: no frames decoded")
            else:
                feats.append(self.enc.encode(np.asarray(frames)))
                errors.append("")
            t1s.append(time.time())
        out = {k: v for k, v in batch.items() if k not in ("frames", "error")}
        # when this encoder worked on each row: the run's start-up, busy fraction and pace
        out["encoder"] = np.asarray([self.name] * len(feats), dtype=object)
        out["encoder_node"] = np.asarray([self.node] * len(feats), dtype=object)
        out["precision"] = np.asarray([self.enc.precision] * len(feats), dtype=object)
        out["enc_t0"], out["enc_t1"] = np.asarray(t0s), np.asarray(t1s)
        out["error"] = np.asarray(errors, dtype=object)
        out["features"] = np.asarray(feats + [None], dtype=object)[:-1]  # ragged → object array
        return out


# ------------------------------------------------------------------------------ output
class _Pace:
    """How the encoders spent the run, from the encode times each row carries: the
    start-up (job start → the first encode), each encoder's busy fraction (time
    encoding / time from its first encode to its last; 1.0 means the decode tasks kept
    it fed), and the job's steady snippet rate over those spans — what a long archive
    runs at, without the actor start-up and model load."""

    def __init__(self) -> None:
        self.spans: Dict[str, List[float]] = {}   # encoder → [first start, last end, busy, snippets]

    def row(self, row: Dict[str, Any]) -> None:
        if row["error"]:
            return
        t0, t1 = float(row["enc_t0"]), float(row["enc_t1"])
        sp = self.spans.setdefault(str(row["encoder"]), [t0, t1, 0.0, 0])
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


def feature_provenance(opts: ExtractOptions, weights=None) -> Dict[str, Any]:
    """What the feature set written with ``opts`` (and the resolved ``weights``) is:
    see :mod:`vadclip.io.provenance`."""
    from vadclip._version import __version__
    from vadclip.clip.catalog import model_config

    pre = dict(model_config(opts.clip.model).get("preprocess_cfg") or {})
    pre.update(weights.preprocess if weights is not None else {})
    return provenance.extraction(opts.clip, weights, opts.clip.image_size,
                                 pre.get("mean") or provenance.OPENAI_MEAN, pre.get("std") or provenance.OPENAI_STD,
                                 opts.snippet_len, opts.crops, opts.precision, opts.decoder, __version__)


def _one_provenance(features: str, prov: Dict[str, Any]) -> None:
    """An output folder never mixes provenances: features already there from other
    settings stop the run in one line, before any worker."""
    old = provenance.read(features)
    diff = provenance.differences(old, prov, provenance.SAME_FOLDER)
    if diff:
        raise provenance.ProvenanceError(
            f"{features}: holds features of other settings ({'; '.join(diff)}: already there vs this run); "
            "one output folder never mixes provenances: give another --out")


def changed_inputs(identities: Dict[str, Optional[str]], threads: int = 32) -> set:
    """The paths whose file is no longer what their rows were made from (size or
    modification time differ).  A path without a recorded identity (rows written before
    identities were) or whose file is gone keeps its rows.  One stat (a HEAD in object
    storage) per path, ``threads`` at a time; a failing store raises (the environment's)."""
    from concurrent.futures import ThreadPoolExecutor

    known = [(p, i) for p, i in identities.items() if i]

    def now(p: str) -> Optional[str]:
        try:
            return identity_of(video_file(p))
        except VideoError:
            return None

    with ThreadPoolExecutor(max(1, min(threads, len(known) or 1))) as pool:
        current = list(pool.map(now, [p for p, _ in known]))
    return {p for (p, old), new in zip(known, current) if new is not None and new != old}


def feature_dir(out_dir: str) -> str:
    return layout.features_dir(out_dir)


def errors_dir(out_dir: str) -> str:
    return layout.extract_errors_dir(out_dir)


# ------------------------------------------------------------------ writing, on workers
class VideoWriter:
    """A Ray actor owning the videos routed to it (:func:`vadclip.jobs.output.shard_of`):
    it assembles each video's encoded chunks, and writes the video's rows (one per crop)
    or its error row as committed parts — by count, and at least every
    ``flush_seconds``.  A video met again (a retried task) is ignored.  ``finish()``
    writes what is buffered and returns the counts."""

    def __init__(self, output: ResumableOutput, schema, run_id: str, rows_per_file: int,
                 flush_seconds: Optional[float], scorer=None) -> None:
        import threading

        import ray

        # score --videos: each assembled video is also scored here (vadclip.jobs.score.Scorer)
        self.scorer = scorer
        if scorer is not None:
            scorer.run_id = run_id
            scorer.start()

        self.fw, self.ew = output.writers(run_id, schema, ERROR_SCHEMA, rows_per_file, flush_seconds,
                                          identities=True)
        self.pending: Dict[str, Dict[str, Any]] = {}
        self.dead: set = set()
        self.written: set = set()    # a retried task may deliver a finished video's chunks again
        self.counts = {"videos_ok": 0, "videos_failed": 0, "rows_written": 0, "snippets": 0, "frames": 0}
        self.pace, self.decoders, self.precisions, self.failures = _Pace(), set(), set(), []
        self.encoder_nodes: set = set()
        self.node = ray.get_runtime_context().get_node_id()
        self.lock = threading.Lock()
        self.ticker = Ticker(self._tick, min(1.0, flush_seconds / 4) if flush_seconds else 1.0, self.lock)

    def _tick(self) -> None:
        self.fw.tick()
        self.ew.tick()
        if self.scorer is not None:
            self.scorer.tick()

    def add(self, cols: Dict[str, np.ndarray]) -> int:
        with self.lock:
            for i in range(len(cols["video_id"])):
                self._row({k: v[i] for k, v in cols.items()})
            self._tick()
        return len(cols["video_id"])

    def _fail(self, path: str, vid: str, error: str, identity: Any = None) -> None:
        self.ew.add([{"path": path, "video_id": vid, "stage": "extract", "error": error,
                      "input_identity": identity}])
        self.counts["videos_failed"] += 1
        self.failures.append(error)

    def _row(self, row: Dict[str, Any]) -> None:
        self.pace.row(row)
        if row.get("decoder"):
            self.decoders.add(str(row["decoder"]))
        if not row["error"]:
            self.precisions.add(str(row["precision"]))
            self.encoder_nodes.add(str(row["encoder_node"]))
        vid = str(row["video_id"])
        if vid in self.dead or vid in self.written:
            return
        if row["error"]:
            self.dead.add(vid)
            self.pending.pop(vid, None)
            self._fail(row["path"], vid, str(row["error"]), row["input_identity"])
            return
        st = self.pending.setdefault(vid, {"chunks": {}, "meta": row})
        st["chunks"][int(row["chunk"])] = np.asarray(row["features"], np.float32)
        if len(st["chunks"]) < int(row["n_chunks"]):
            return
        self.pending.pop(vid)
        self.written.add(vid)
        feats = np.concatenate([st["chunks"][k] for k in range(int(row["n_chunks"]))], axis=0)
        meta = st["meta"]
        self.fw.add([dict(feature_row(vid, meta["path"], meta["label"] or None, c, meta["fps"], meta["num_frames"],
                                      feats[:, c]), input_identity=meta["input_identity"])
                     for c in range(feats.shape[1])])
        self.counts["videos_ok"] += 1
        self.counts["rows_written"] += feats.shape[1]
        self.counts["snippets"] += feats.shape[0]
        self.counts["frames"] += int(meta["num_frames"])
        if self.scorer is not None:
            self.scorer.video(vid, meta, feats)

    def finish(self, complete: bool = True) -> Dict[str, Any]:
        """Write what is buffered; with ``complete`` (the pipeline delivered everything),
        a video still missing chunks is an error row — never dropped silently."""
        with self.lock:
            self.ticker.stop()
            self.fw.flush()
            if complete:
                for vid, st in self.pending.items():   # cannot happen unless chunks went missing
                    self._fail(st["meta"]["path"], vid, "incomplete: not all snippet chunks were encoded")
                self.pending = {}
            self.ew.flush()
            scores = self.scorer.finish() if self.scorer is not None else None
            return {**self.counts, "scores": scores, "spans": self.pace.spans, "decoders": sorted(self.decoders),
                    "precisions": sorted(self.precisions), "node": self.node, "encoder_nodes": sorted(self.encoder_nodes),
                    "failures": self.failures[:1000],
                    "parts": self.fw.parts}


class VideoSink:
    """Where the encoded chunks go: a Ray Data ``Datasink`` whose write tasks (on the
    workers) send each chunk row to the :class:`VideoWriter` owning its video.  The
    driver creates the writers (on the nodes other than its own where there are any,
    :func:`vadclip.jobs.output.placements`) and, after the pipeline, collects their counts."""

    def __init__(self, output: ResumableOutput, schema, run_id: str, opts: ExtractOptions, n: int,
                 scorer=None) -> None:
        import ray

        actor = ray.remote(VideoWriter)
        self.writers = [actor.options(num_cpus=0, max_restarts=0, scheduling_strategy=where).remote(
            output, schema, f"{run_id}-w{i:03d}", opts.rows_per_file, opts.flush_seconds, scorer)
            for i, where in enumerate(placements(n))]

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

    def finish(self, complete: bool = True) -> List[Dict[str, Any]]:
        import ray

        try:
            return ray.get([w.finish.remote(complete) for w in self.writers])
        finally:
            for w in self.writers:
                ray.kill(w)


# ------------------------------------------------------------------------------ the job
@dataclass
class _Plan:
    items: List[Dict[str, Any]]
    todo: List[Dict[str, Any]]
    output: ResumableOutput
    prov: Dict[str, Any]
    weights: Any
    changed: set


def _check_environment(opts: ExtractOptions, log) -> Any:
    """Once, at job start, on the driver: packages, the CLIP weights, the decoder."""
    from vadclip.clip.backbone import check_packages

    check_packages("decord", "open_clip")
    weights = opts.clip.resolve()                      # once per job, here, before any worker
    try:
        check_decoder(opts.decoder, opts.decode_device)
    except ValueError as e:
        raise InputError(str(e)) from None
    why = torchcodec_missing() if opts.decoder != "decord" else None
    if why is not None:   # a decoder that cannot load is the environment's problem, never a video's
        if opts.decoder == "torchcodec":
            raise InputError(f"--decoder torchcodec: torchcodec cannot decode here: {why}; "
                             "use --decoder auto (decord where torchcodec cannot decode) or --decoder decord")
        log(f"[extract] torchcodec cannot decode here ({why}): decoding with decord")
    return weights


def _plan(source: str, out_dir: str, opts: ExtractOptions, retry_failed: bool, log) -> _Plan:
    """What to do: the manifest, less what earlier runs did (unless its file changed)."""
    weights = _check_environment(opts, log)
    items = load_manifest(source)
    storage.makedirs(out_dir)
    output = ResumableOutput(feature_dir(out_dir), errors_dir(out_dir))
    output.start()
    prov = feature_provenance(opts, weights)
    _one_provenance(output.rows_dir, prov)
    done_ids, failed_ids = output.identities()
    changed = changed_inputs({**failed_ids, **done_ids})
    if changed:   # a video replaced at the same path (a camera's daily file rewritten): its rows go, it runs again
        drop_rows(output.rows_dir, "path", changed)
        drop_rows(output.errors_dir, "path", changed)
        log(f"[extract] {len(changed)} videos changed since their rows were written: processing them again")
    done, failed = set(done_ids) - changed, set(failed_ids) - changed
    if retry_failed and failed:
        drop_rows(output.errors_dir, "path", failed - done)
        failed = set()
    todo = [it for it in items if it["path"] not in done and it["path"] not in failed]
    return _Plan(items, todo, output, prov, weights, changed)


def _pipeline(plan: _Plan, opts: ExtractOptions, log):
    """decode (tasks) → encode (actor pool) as a Ray Data dataset; each stage says what
    share of a GPU it takes (:meth:`DecodeStage.gpus`, :meth:`EncodeStage.gpus`)."""
    import ray

    from vadclip.jobs.cluster import cluster_gpus, share_weights

    have_gpus = cluster_gpus() > 0
    if opts.decode_device == "cuda" and not have_gpus:
        log("[extract] decode device cuda: the cluster has no GPU, the videos are decoded on the CPU")
    decode_gpus = DecodeStage.gpus(opts, have_gpus)
    ds = ray.data.from_items(plan.todo, override_num_blocks=max(1, min(len(plan.todo), 256)))
    ds = ds.flat_map(DecodeStage(opts, opts.clip.image_size, "cuda" if decode_gpus else "cpu"),
                     num_cpus=DecodeStage.num_cpus, num_gpus=decode_gpus)
    return ds.map_batches(EncodeStage, **EncodeStage.ray_args(opts, EncodeStage.gpus(opts, have_gpus),
                                                              share_weights(plan.weights)))


def _summarise(plan: _Plan, results: List[Dict[str, Any]], t0: float) -> Dict[str, Any]:
    """The writers' counts and the encoders' pace, as one run summary."""
    s: Dict[str, Any] = {"videos_total": len(plan.items), "videos_skipped": len(plan.items) - len(plan.todo),
                         "videos_changed": len(plan.changed), "videos_ok": 0, "videos_failed": 0,
                         "rows_written": 0, "snippets": 0, "frames": 0}
    if results:
        for k in ("videos_ok", "videos_failed", "rows_written", "snippets", "frames"):
            s[k] = sum(r[k] for r in results)
        pace = _Pace()
        for r in results:
            pace.merge(r["spans"])
        s.update(pace.summary(t0))
        s["decoders"] = sorted({d for r in results for d in r["decoders"]})
        s["precisions"] = sorted({p for r in results for p in r["precisions"]})
        s["writer_nodes"] = sorted({r["node"] for r in results})
        s["encoder_nodes"] = sorted({n for r in results for n in r["encoder_nodes"]})
        s["parts_written"] = sum(r["parts"] for r in results)
    elapsed = time.time() - t0
    s.update(elapsed_s=round(elapsed, 3),
             frames_per_s=round(s["frames"] / elapsed, 2) if elapsed > 0 else 0.0,
             snippets_per_s=round(s["snippets"] / elapsed, 2) if elapsed > 0 else 0.0,
             output=plan.output.rows_dir, errors=plan.output.errors_dir)
    return s


def run_extract(source: str, out_dir: str, opts: ExtractOptions, retry_failed: bool = False,
                address: Optional[str] = None, log=None) -> Dict[str, Any]:
    """Extract features for every video of ``source`` into ``out_dir``/features (Parquet)
    with failures in ``out_dir``/errors.  The workers write every row; the driver plans,
    starts the pipeline and sums the writers' counts.  Returns the run summary (also
    written to ``out_dir``/summary.json)."""
    return extract_and(source, out_dir, opts, retry_failed=retry_failed, address=address, log=log)[0]


def extract_and(source: str, out_dir: str, opts: ExtractOptions, scorer=None, retry_failed: bool = False,
                address: Optional[str] = None, log=None):
    """:func:`run_extract`, each assembled video also handed to ``scorer`` in its
    writer (``score --videos``: one streaming pipeline).  Returns (summary, the writers'
    results)."""
    from vadclip.jobs.cluster import ensure_ray

    log = log or logging.getLogger("vadclip").info
    out_dir = storage.absolute(out_dir)
    plan = _plan(source, out_dir, opts, retry_failed, log)
    log(f"[extract] {len(plan.items)} videos: {len(plan.items) - len(plan.todo)} already done or failed earlier, "
        f"{len(plan.todo)} to process")
    t0 = time.time()
    results: List[Dict[str, Any]] = []
    if plan.todo:
        ensure_ray(address)
        sink = VideoSink(plan.output, provenance.with_provenance(FEATURE_SCHEMA, plan.prov), plan.output.run_id, opts,
                         n=opts.num_writers or max(1, opts.num_encoders), scorer=scorer)
        try:
            _pipeline(plan, opts, log).write_datasink(sink.datasink())
        except BaseException:
            sink.finish(complete=False)     # what the writers finished is committed: a re-run resumes from it
            raise
        results = sink.finish()
        for r in results:
            for line in r["failures"]:
                log(f"[extract] FAILED {line}")
    summary = _summarise(plan, results, t0)
    storage.write_text(storage.join(out_dir, layout.EXTRACT_SUMMARY), json.dumps(summary, indent=2))
    log(f"[extract] done: {summary['videos_ok']} ok, {summary['videos_failed']} failed, "
        f"{summary['videos_skipped']} skipped; {summary['snippets']} snippets, {summary['frames']} frames "
        f"in {summary['elapsed_s']:.1f}s ({summary['frames_per_s']} frames/s) → {plan.output.rows_dir}"
        + (f"; decoded with {', '.join(summary['decoders'])}" if summary.get("decoders") else "")
        + (f"; encoded in {', '.join(summary['precisions'])}" if summary.get("precisions") else ""))
    if "startup_s" in summary:
        log(f"[extract] encoders: first encode {summary['startup_s']:.1f}s after the start, then busy "
            f"{summary['encoder_busy_fraction']:.1%} of the time at {summary['steady_snippets_per_s']} snippets/s")
    return summary, results
