"""Video decoding: one frame per snippet, resize + centre crop (or 5/10 crops) to the
CLIP input size, in bounded chunks so memory does not grow with video length.

Two decoders deliver the same frames (the same pixels on every file the tests and
``bench/decode.py`` write): torchcodec, on the system's FFmpeg libraries (the fastest
on the CPU in ``bench/decode.py``, and NVDEC on a GPU with ``device="cuda"``), and
decord, whose wheel carries its own FFmpeg.  ``decoder="auto"`` takes torchcodec where
it loads and decord elsewhere (torchcodec asked for by name where it cannot decode is an error of
the environment, never of a video); a CUDA request falls back to the CPU where there is no
CUDA device or the GPU decoder cannot read a file."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

from vadclip.errors import EnvironmentProblem, InputError
from vadclip.io import storage
from vadclip.io.ids import VIDEO_EXTENSIONS
from vadclip.io.progress import beat

log = logging.getLogger(__name__)



class VideoError(InputError):
    """A video that cannot be decoded (an input problem: the job records an error row and
    goes on); the message names the file and the problem."""


@dataclass
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    decoder: str = ""       # what decoded it: decord | torchcodec-cpu | torchcodec-cuda | pyav
    # each listed frame's presentation time (s, from the first), from the container's
    # timestamps; None where it gives none for some frame
    times: Optional[np.ndarray] = None
    frames_listed: int = 0  # a truncated file: the frames its container lists (num_frames: those that decode)

    def snippet_count(self, snippet_len: int) -> int:
        return -(-self.num_frames // snippet_len)

    def snippet_times(self, snippet_len: int) -> Optional[List[float]]:
        """The times (s) where the snippets start, and where the last one ends
        (``snippet_count + 1`` values), from the frames' timestamps — for a
        variable-frame-rate video only (None where ``i * snippet_len / fps`` is within
        half a frame of every snippet's start, as for any constant-rate file)."""
        n = self.num_frames
        if self.times is None or len(self.times) < n or n < 2:
            return None
        t = np.asarray(self.times[:n], np.float64)
        starts = np.arange(0, n, snippet_len)
        if np.max(np.abs(t[starts] - starts / self.fps)) <= 0.5 / self.fps:
            return None
        step = float(np.median(np.diff(t)))
        return [round(float(x), 6) for x in t[starts]] + [round(float(t[-1] + step), 6)]


# ------------------------------------------------------------------------ decoders
DECODERS = ("auto", "decord", "torchcodec", "pyav")
FALLBACK_ORDER = ("torchcodec", "decord", "pyav")   # a file one cannot read goes to the next
DECODE_DEVICES = ("cpu", "cuda")


def _first_line(e: BaseException) -> str:
    """An exception's first line, without torchcodec's ``Class, file.cpp:NN, `` prefix."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return re.sub(r"^\w+, \S+\.(?:cpp|h):\d+, ", "", line)[:200]


PROBE_CLIP = Path(__file__).parent / "assets" / "probe.mp4"   # 2 H.264 frames, 32x32, 1.5 KB


def frame_times(pts: Sequence[Optional[int]], time_base) -> Optional[np.ndarray]:
    """Presentation times (s, from the first frame) of a stream's frames in display
    order, from its packets' timestamps (``time_base`` units); None where a packet has none."""
    if not pts or any(p is None for p in pts) or not time_base:
        return None
    t = np.sort(np.asarray(pts, np.int64))
    return (t - t[0]).astype(np.float64) * float(time_base)


def stream_times(path: str) -> Optional[np.ndarray]:
    """The presentation times of the frames of ``path``'s video stream (:func:`frame_times`),
    read with PyAV from the packets without decoding any; None where it cannot."""
    try:
        import av

        with av.open(path) as c:
            st = c.streams.video[0]
            return frame_times(_packet_pts(c, st), st.time_base)
    except Exception:  # noqa: BLE001 - no timestamps: times come from the frame rate
        return None


def rate_of(times: Optional[np.ndarray]) -> Optional[float]:
    """Frames per second over the whole stream (the frames / their span, the last frame
    lasting as long as the typical frame), from :func:`frame_times`."""
    if times is None or len(times) < 2:
        return None
    span = float(times[-1] - times[0]) + float(np.median(np.diff(times)))
    return len(times) / span if span > 0 else None


def rate_checked(fps: float, times: Optional[np.ndarray]) -> float:
    """``fps`` (a header's), or the frames' own rate (:func:`rate_of`) where the header
    gives none or is more than 1% off it."""
    rate = rate_of(times)
    if rate is not None and (not np.isfinite(fps) or fps <= 0 or abs(rate / fps - 1) > 0.01):
        return rate
    return fps


@functools.lru_cache(maxsize=None)
def torchcodec_missing() -> Optional[str]:
    """None where torchcodec can decode in this process, else why not (one line).

    Checked by decoding a bundled two-frame clip once per process: ``import
    torchcodec.decoders`` succeeds without FFmpeg, whose shared libraries torchcodec
    loads only at the first decoder, so an import says nothing."""
    try:
        from torchcodec.decoders import VideoDecoder

        VideoDecoder(PROBE_CLIP.read_bytes(), seek_mode="exact").get_frame_at(1)
    except Exception as e:   # ImportError, or RuntimeError when FFmpeg's libraries do not load
        why = _first_line(e).rstrip(" :.")
        if "Could not load libtorchcodec" in why:
            why = ("it cannot load FFmpeg's shared libraries: none of a version it supports is installed "
                   "(apt-get install ffmpeg)")
        return why
    return None


class DecoderUnavailable(EnvironmentProblem):
    """The decoder asked for by name cannot decode in this process: a problem of the
    environment (never of a video)."""


_noted: set = set()


def _note_once(msg: str, level: int = logging.WARNING) -> None:
    if msg not in _noted:
        _noted.add(msg)
        log.log(level, msg)


def check_decoder(decoder: str, device: str) -> None:
    """A clear error for a decoder/device pair that cannot mean anything."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if device not in DECODE_DEVICES:
        raise ValueError(f"decode device must be one of {', '.join(DECODE_DEVICES)}, got {device!r}")
    if decoder in ("decord", "pyav") and device == "cuda":
        raise ValueError("decoding on cuda needs the torchcodec decoder (decoder 'torchcodec' or 'auto'), "
                         f"{decoder} decodes on the CPU here")


def resolve_decoder(decoder: str = "auto", device: str = "cpu") -> Tuple[str, str]:
    """What this process decodes with: ("decord" | "torchcodec", "cpu" | "cuda").

    ``auto`` takes torchcodec where it can decode in this process (:func:`torchcodec_missing`)
    and decord elsewhere, said once in the log; ``torchcodec`` asked for by name where
    it cannot decode raises :class:`DecoderUnavailable` (the environment's problem:
    Ray retries the task, then the job fails; no video is marked failed).  cuda asked
    for where there is no CUDA device → the CPU, said once."""
    check_decoder(decoder, device)
    if decoder in ("decord", "pyav"):
        return decoder, "cpu"
    why = torchcodec_missing()
    if why is not None:
        if decoder == "torchcodec":
            raise DecoderUnavailable(f"--decoder torchcodec: torchcodec cannot decode here: {why}")
        # the job's driver says so once for the run (run_extract); here, a debug note per process
        _note_once(f"torchcodec cannot decode here ({why}): decoding with decord on the CPU", logging.DEBUG)
        return "decord", "cpu"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        _note_once("no CUDA device here: torchcodec decodes on the CPU")
        return "torchcodec", "cpu"
    return "torchcodec", device


class DecordReader:
    """decord on the CPU; ``get(indices)`` → [N, H, W, 3] uint8 numpy."""
    device = "cpu"
    truncated_at: Optional[int] = None     # a seeking decoder fails instead; PyAV finds where a stream ends
    times: Optional[np.ndarray] = None

    def __init__(self, path: str, name: str) -> None:
        import decord

        try:
            self.vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises RuntimeError/DECORDError
            raise VideoError(f"{name}: not a readable video ({_first_line(e)})") from None
        self.num_frames = len(self.vr)
        self.fps = float(self.vr.get_avg_fps() or 0.0)
        self.kind = "decord"

    def get(self, idx: Sequence[int]) -> np.ndarray:
        return self.vr.get_batch([int(i) for i in idx]).asnumpy()


class TorchcodecReader:
    """torchcodec (exact seeks, one FFmpeg thread) on ``device``."""
    truncated_at: Optional[int] = None
    times: Optional[np.ndarray] = None

    def __init__(self, path: str, name: str, device: str = "cpu") -> None:
        from torchcodec.decoders import VideoDecoder

        try:
            # exact seek mode: the frame count and frame indices from a scan of the file
            self.dec = VideoDecoder(path, device=device, dimension_order="NHWC", seek_mode="exact",
                                    num_ffmpeg_threads=1)
            md = self.dec.metadata
        except Exception as e:
            raise VideoError(f"{name}: not a readable video ({_first_line(e)})") from None
        self.num_frames = int(md.num_frames or 0)
        self.fps = float(md.average_fps or 0.0)
        self.device = device
        self.kind = f"torchcodec-{device}"

    def get(self, idx: Sequence[int]):
        """[N, H, W, 3] uint8: a numpy array, or a CUDA tensor when decoding on the GPU."""
        t = self.dec.get_frames_at([int(i) for i in idx]).data
        return t if t.is_cuda else t.numpy()


class PyAVReader:
    """PyAV (its wheel carries FFmpeg), decoding the stream in order: what FFmpeg itself
    decodes, whatever the container (MPEG-TS and MPEG-PS included, where seeking by
    index fails).  The frame count is the number of the stream's packets (read without
    decoding, with their timestamps: ``times``); a stream that ends before it, or whose
    decoding fails after its first frame (a truncated file), gives its last decoded
    frame for the missing ones and says how many decoded (``truncated_at``)."""
    device = "cpu"
    kind = "pyav"

    def __init__(self, path: str, name: str) -> None:
        import av

        self.path, self.name, self._av = path, name, av
        self.truncated_at: Optional[int] = None
        self.truncation = ""                     # why decoding ended early (FFmpeg's words)
        try:
            with av_opened(path) as c:
                if not c.streams.video:
                    what = "audio only" if c.streams.audio else "no stream of any kind"
                    raise VideoError(f"{name}: no video stream (the file holds {what})")
                st = c.streams.video[0]
                rate = st.average_rate or st.guessed_rate or 0
                self.fps = float(rate) if rate else 0.0
                pts = _packet_pts(c, st)
                self.num_frames = len(pts)
                self.times = frame_times(pts, st.time_base)
        except VideoError:
            raise
        except Exception as e:  # av.error.*: not a container FFmpeg knows
            raise VideoError(f"{name}: not a readable video ({_first_line(e)})") from None
        self._open()

    def _open(self) -> None:
        self._close()
        if storage.is_local(self.path):
            self.container = self._av.open(storage.resolve(self.path)[1])
        else:                                    # in place: a seekable stream, nothing copied
            fs, p = storage.resolve(self.path)
            self._handle = fs.open_input_file(p)
            self.container = self._av.open(self._handle)
        st = self.container.streams.video[0]
        st.thread_count = 1                      # one core per decode task, as the other decoders
        self._frames = self.container.decode(st)
        self.pos, self._frame, self._rgb = -1, None, None   # the last frame decoded (converted lazily)

    def _close(self) -> None:
        for h in (getattr(self, "container", None), getattr(self, "_handle", None)):
            if h is not None:
                h.close()
        self.container = self._handle = None

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass

    def _next(self) -> bool:
        beat()                                   # each frame decoded in order is progress
        try:
            frame = next(self._frames)
        except StopIteration:
            return False
        except Exception as e:  # a packet FFmpeg cannot decode: the video's problem, at this frame
            if self.pos < 0:
                raise VideoError(f"{self.name}: decoding failed at frame 0: {_first_line(e)}") from None
            self.truncation = _first_line(e)       # frames decoded up to here: a truncated file
            return False
        self._frame, self._rgb = frame, None
        self.pos += 1
        return True

    @property
    def _last(self) -> Optional[np.ndarray]:
        if self._rgb is None and self._frame is not None:
            self._rgb = self._frame.to_ndarray(format="rgb24")
        return self._rgb

    def get(self, idx: Sequence[int]) -> np.ndarray:
        out = []
        for i in (int(i) for i in idx):
            if i < self.pos:                       # backwards (frame 0 read again): from the start
                self._open()
            while self.pos < i and self.truncated_at is None:
                if not self._next():
                    self.truncated_at = self.pos + 1
            if self._last is None:
                raise VideoError(f"{self.name}: truncated: no frame of its {self.num_frames} decodes")
            out.append(self._last)
        return np.stack(out)


def _open_reader(path: str, name: str, decoder: str, device: str):
    kind, dev = resolve_decoder(decoder, device)
    return _open_kind(path, name, kind, dev)


def _open_kind(path: str, name: str, kind: str, dev: str = "cpu"):
    if kind == "decord":
        return DecordReader(path, name)
    if kind == "pyav":
        return PyAVReader(path, name)
    if dev == "cuda":
        try:
            return TorchcodecReader(path, name, "cuda")
        except VideoError as e:   # the GPU decoder's limits are not the video's fault: the CPU decides
            _note_once(f"the CUDA decoder cannot open {name} ({e}): decoding it on the CPU")
    return TorchcodecReader(path, name, "cpu")


@contextlib.contextmanager
def av_opened(path: str):
    """A PyAV container of the video ``path``: a local file, or an object read in place
    through a seekable stream (range requests; nothing copied to scratch)."""
    import av

    if storage.is_local(path):
        with av.open(storage.resolve(path)[1]) as c:
            yield c
        return
    fs, p = storage.resolve(path)
    with fs.open_input_file(p) as f, av.open(f) as c:
        yield c


READ_BATCH = 8    # frames asked of a seeking decoder at once: each batch done is progress (vadclip.io.progress)


def _packet_pts(container, stream) -> List[Optional[int]]:
    """The timestamps of ``stream``'s packets (a demux pass, no decoding), in order."""
    pts = []
    for n, pk in enumerate(container.demux(stream)):
        if pk.size:
            pts.append(pk.pts)
        if n % 1024 == 0:
            beat()
    return pts


def _get_in_batches(reader, sel: Sequence[int]):
    parts = []
    for i in range(0, len(sel), READ_BATCH):
        parts.append(reader.get(sel[i:i + READ_BATCH]))
        beat()
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


def _read(reader, sel: Sequence[int], path: str, name: str):
    """Frames ``sel`` of ``reader``; a GPU decoding failure retries on the CPU (the
    reader is replaced); a CPU failure is the video's.  Returns (reader, frames)."""
    try:
        return reader, _get_in_batches(reader, sel)
    except (MemoryError, VideoError):    # a VideoError says already where and what
        raise
    except Exception as e:
        if reader.device == "cuda":
            _note_once(f"the CUDA decoder failed on {name} ({_first_line(e)}): decoding it on the CPU")
            reader = TorchcodecReader(path, name, "cpu")
            return _read(reader, sel, path, name)
        raise VideoError(f"{name}: decoding failed at frame {int(sel[0])} of {reader.num_frames} "
                         f"(truncated or corrupt?): {_first_line(e)}") from None


def video_file(path: str):
    """The file info of the video ``path`` (local or in object storage): a missing or
    empty object is a :class:`VideoError` of this video; a failing store (timeouts,
    refused connections, credentials) raises ``OSError``, a problem of the environment
    that Ray retries and never records against the video."""
    try:
        st = storage.info(path)
    except storage.UnsupportedURI as e:
        raise VideoError(str(e)) from None
    if st.type == storage.pafs.FileType.NotFound:
        raise VideoError(f"{path}: file not found")
    if st.type != storage.pafs.FileType.File:
        raise VideoError(f"{path}: not a file")
    if st.size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    return st


def identity_of(st) -> str:
    """What identifies the content of a file between two runs: its size and
    modification time (an object store's last-modified time), ``SIZE:MTIME_NS``."""
    mtime = getattr(st, "mtime_ns", None)
    return f"{st.size}:{mtime if mtime is not None else ''}"


def same_identity(a: str, b: str) -> bool:
    """Whether two identities (:func:`identity_of`) are one file's.  An object store's
    listing gives modification times in milliseconds where its HEAD gives whole seconds:
    a time of whole seconds matches any time within that second."""
    if a == b:
        return True
    (sa, _, ma), (sb, _, mb) = a.partition(":"), b.partition(":")
    if sa != sb or not ma or not mb:
        return sa == sb and not (ma and mb)
    ta, tb = int(ma), int(mb)
    return (ta % 10**9 == 0 or tb % 10**9 == 0) and ta // 10**9 == tb // 10**9


def decoder_for(path: str, decoder: str, size: Optional[int], copy_max_bytes: float) -> str:
    """The decoder the video ``path`` (``size`` bytes) is given: ``decoder``, except that
    with ``auto`` an object in storage larger than ``copy_max_bytes`` (> 0) goes to PyAV,
    which decodes it in order where it lies (:func:`in_place`) rather than from a copy in
    scratch, so no decode task needs more scratch than that whatever a recording's size."""
    if decoder == "auto" and copy_max_bytes > 0 and not storage.is_local(path) and (size or 0) > copy_max_bytes:
        return "pyav"
    return decoder


def in_place(path: str, decoder: str = "auto", device: str = "cpu") -> bool:
    """Whether the video ``path`` is decoded where it lies, through a seekable stream of
    range requests, rather than from a copy in node-local scratch: an object in storage
    that PyAV alone decodes (the MPEG-TS/PS exports of DVRs, in order; ``--decoder pyav``),
    so a day-long recording needs neither its size in scratch nor a download first."""
    return not storage.is_local(path) and [k for k, _ in decoder_chain(decoder, device, path)] == ["pyav"]


@contextlib.contextmanager
def fetched(path: str, st=None, in_place: bool = False) -> Iterator[str]:
    """A local file holding the video ``path`` (local or in object storage) for the
    length of the ``with`` (``st``: its :func:`video_file` info, when already known).
    Remote videos are streamed to node-local scratch, removed afterwards (failures
    included); with ``in_place`` (:func:`in_place`) the path itself, read where it lies.
    Problems as in :func:`video_file`."""
    if st is None:
        st = video_file(path)
    if in_place:
        yield path
        return
    try:
        with storage.local_file(path, suffix=storage.extension(path), size=getattr(st, "size", None)) as local:
            yield local
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found (removed while being read)") from None


# MPEG transport and program streams (what DVRs and NVRs export) carry no index of their
# frames: seeking by frame number in them gives wrong frames with torchcodec and decord
# (measured on FFmpeg-made H.264, HEVC and MPEG-2 files: up to 255 levels off, or no
# frame at all), so ``auto`` decodes them in order with PyAV, exactly as FFmpeg does.
IN_ORDER_CONTAINERS = (".ts", ".m2ts", ".mts", ".mpg", ".mpeg", ".vob")


def decoder_chain(decoder: str = "auto", device: str = "cpu", path: Optional[str] = None) -> List[Tuple[str, str]]:
    """The decoders a file is given to, in turn, until one reads it: the one
    :func:`resolve_decoder` picks, then those after it in ``FALLBACK_ORDER``
    (torchcodec → decord → PyAV) on the CPU; with ``auto``, PyAV alone for the MPEG-TS
    and MPEG-PS files of ``IN_ORDER_CONTAINERS``."""
    if decoder == "auto" and path is not None and storage.extension(path).lower() in IN_ORDER_CONTAINERS:
        return [("pyav", "cpu")]
    kind, dev = resolve_decoder(decoder, device)
    return [(kind, dev)] + [(k, "cpu") for k in FALLBACK_ORDER[FALLBACK_ORDER.index(kind) + 1:]]


def open_video(path: str, name: Optional[str] = None, decoder: str = "auto", device: str = "cpu"):
    """(reader, info) of a local video file: ``reader.get(indices)`` → [N, H, W, 3]
    uint8 frames (a CUDA tensor when decoding on the GPU) and ``reader.kind`` says which
    decoder it is; errors name ``name`` (default ``path``)."""
    name = name or path
    if storage.is_local(path):
        if not os.path.isfile(path):
            raise VideoError(f"{name}: file not found")
        if os.path.getsize(path) == 0:
            raise VideoError(f"{name}: empty file (0 bytes)")
    tried = []
    for kind, dev in decoder_chain(decoder, device, name):
        try:
            reader = _open_kind(path, name, kind, dev)
            if reader.num_frames <= 0:
                raise VideoError(f"{name}: video has no frames")
            try:
                reader, first = _read(reader, [0], path, name)
            except VideoError as e:
                raise VideoError(f"{name}: cannot decode the first frame ({str(e).split(': ', 1)[-1]})") from None
            break
        except VideoError as e:
            tried.append((kind, e))
    else:
        kinds = [k for k, _ in tried]
        plain = "no video stream" in str(tried[-1][1])      # nothing the others could add
        also = f" (nor could {' or '.join(kinds[:-1])} read it)" if len(kinds) > 1 and not plain else ""
        raise VideoError(f"{tried[-1][1]}{also}")
    if tried:
        _note_once(f"{name}: {', '.join(k for k, _ in tried)} could not read it "
                   f"({str(tried[0][1]).split(': ', 1)[-1][:120]}): decoded with {reader.kind}", logging.INFO)
    n = reader.num_frames
    h, w = first.shape[1:3]
    # the frames' own timestamps (PyAV lists them while counting; for the seeking
    # decoders, a pass over the packets without decoding): where they agree with the
    # decoder's frame count they give the rate (a header's average can be off, e.g. in a
    # truncated file) and, for a variable-frame-rate file, each snippet's time
    times = reader.times if reader.kind == "pyav" else stream_times(path)
    if times is not None and len(times) != n:
        times = None
    fps = rate_checked(reader.fps, times)
    if not np.isfinite(fps) or fps <= 0:
        fps = 30.0
    return reader, VideoInfo(name, n, fps, int(h), int(w), reader.kind, times=times)


def snippet_frame_indices(num_frames: int, snippet_len: int) -> np.ndarray:
    """The frame sampled for each ``snippet_len``-frame snippet: its middle frame
    (clamped to the last frame for a short final snippet)."""
    starts = np.arange(0, num_frames, snippet_len)
    return np.minimum(starts + snippet_len // 2, num_frames - 1)


def crop_views(frames, size: int, crops: int) -> np.ndarray:
    """[N, H, W, 3] uint8 (numpy, or a torch tensor on any device: the resize runs
    there) → [N, crops, 3, size, size] uint8 numpy.

    crops=1: resize the short side to ``size`` and centre crop (CLIP preprocessing).
    crops=5/10: resize the short side to ``size*256/224``; centre, top-left, top-right,
    bottom-left, bottom-right; for 10 the same five of the horizontally flipped frame."""
    import torch     # here, not at the module's top: a job's driver lists and plans with this module
    import torch.nn.functional as F

    if crops not in (1, 5, 10):
        raise ValueError(f"crops must be 1, 5 or 10, got {crops}")
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    x = x.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    short = size if crops == 1 else int(round(size * 256 / 224))
    scale = short / min(h, w)
    nh, nw = max(short, int(round(h * scale))), max(short, int(round(w * scale)))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp_(0, 255).round_().to(torch.uint8)
    cy, cx = (nh - size) // 2, (nw - size) // 2
    boxes = [(cy, cx)]
    if crops > 1:
        boxes += [(0, 0), (0, nw - size), (nh - size, 0), (nh - size, nw - size)]
    views = [x[:, :, t:t + size, l:l + size] for t, l in boxes]
    if crops == 10:
        flipped = x.flip(-1)
        views += [flipped[:, :, t:t + size, l:l + size] for t, l in boxes]
    return torch.stack(views, dim=1).cpu().numpy()


def iter_snippet_chunks(path: str, snippet_len: int = 16, size: int = 224, crops: int = 1,
                        chunk_snippets: int = 32, name: Optional[str] = None, decoder: str = "auto",
                        device: str = "cpu") -> Tuple[VideoInfo, Iterator[np.ndarray]]:
    """Open a local video file and return (info, iterator of [n, crops, 3, size, size]
    uint8 chunks); errors name ``name`` (the user's path or URI, default ``path``).
    ``info.decoder`` says what decoded it (after the fallbacks of :func:`resolve_decoder`).

    ``info`` is final once the last chunk is out: a truncated file's ``num_frames`` is
    then the frames that decode (``frames_listed``: what its container lists), and the
    chunks past them repeat its last frame — keep ``info.snippet_count()`` snippets."""
    name = name or path
    reader, info = open_video(path, name, decoder, device)
    idx = snippet_frame_indices(info.num_frames, snippet_len)

    chain = [k for k, _ in decoder_chain(decoder, device, name)]
    later = chain[chain.index(reader.kind.split("-")[0]) + 1:] if reader.kind.split("-")[0] in chain else []

    listed = info.num_frames

    def gen():
        rd, rest = reader, list(later)
        for s in range(0, len(idx), chunk_snippets):
            sel = idx[s:s + chunk_snippets].tolist()
            # the last chunk also reads the last listed frame (at most half a snippet further):
            # where it does not decode, the file is truncated and PyAV (in order) finds how
            # many frames do, so the frame count is what decodes, not what the header lists
            last = s + chunk_snippets >= len(idx)
            want = sel + [listed - 1] if last and sel[-1] != listed - 1 else sel
            while True:
                try:
                    rd, frames = _read(rd, want, path, name)
                    frames = frames[:len(sel)]
                    break
                except VideoError as e:   # this decoder stops part-way: the next one takes over here
                    if not rest:
                        raise
                    kind = rest.pop(0)
                    _note_once(f"{name}: {rd.kind} failed part-way ({str(e).split(': ', 1)[-1][:120]}): "
                               f"{kind} decodes the rest", logging.INFO)
                    try:
                        rd = _open_kind(path, name, kind)
                    except VideoError:
                        continue
            info.decoder = rd.kind        # a GPU failure or a fallback may have moved it
            if rd.truncated_at is not None and rd.truncated_at < info.num_frames:
                info.frames_listed, info.num_frames = listed, int(rd.truncated_at)
                # the rate from the frames that decode (a truncated stream lists packets of
                # frames past its end, whose timestamps would stretch it)
                info.fps = rate_checked(info.fps, None if info.times is None else info.times[:info.num_frames])
                _note_once(f"{name}: truncated: {info.num_frames} of its {listed} frames decode "
                           f"({getattr(rd, 'truncation', '') or 'the stream ends there'}); its row holds those",
                           logging.INFO)
            if frames.shape[0] != len(sel):
                raise VideoError(f"{name}: decoder returned {frames.shape[0]} frames, expected {len(sel)}")
            yield crop_views(frames, size, crops)

    return info, gen()


def recording_start(path: str) -> Optional[str]:
    """The recording's start as the container records it (the ``creation_time`` tag an
    MP4/MOV's header, or its video stream, holds: what cameras, NVRs and FFmpeg write), as
    UTC ISO 8601 (``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``); None where there is none, or
    the zero time of a muxer that had no clock (1904 or 1970).  Read with PyAV (the header
    only, no frame decoded); a file it cannot open has none."""
    import datetime as dt

    try:
        with av_opened(path) as c:
            text = c.metadata.get("creation_time")
            if not text and c.streams.video:
                text = c.streams.video[0].metadata.get("creation_time")
    except Exception:  # noqa: BLE001 - no start time is not a problem of the video
        return None
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    t = t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)
    return None if t.year <= 1970 else t.isoformat()


def list_videos(root: str) -> List[str]:
    """Video files under a folder or object-store prefix (recursive, sorted).  A local
    symbolic link whose target is gone is listed too, so that it ends as an error row
    (``file not found``) instead of vanishing without a trace."""
    return listed_videos(root)["path"].to_pylist()


def listed_videos(root: str) -> "pa.Table":
    """:func:`list_videos` as Arrow columns, ``path`` (sorted) and ``identity``
    (:func:`identity_of`) as the one listing saw it (null for a dangling link): what tells
    a re-run which files changed, without a request per file.  Built a folder at a time
    (:func:`vadclip.io.storage.listing`): no object per file of the archive is held."""
    import pyarrow as pa

    paths: List[pa.Array] = []
    idents: List[pa.Array] = []
    for batch in storage.listing(root, recursive=True, suffixes=VIDEO_EXTENSIONS):
        if batch:
            paths.append(pa.array([f for f, _ in batch], pa.string()))
            idents.append(pa.array([identity_of(i) for _, i in batch], pa.string()))
    if storage.is_local(root):
        base = storage.resolve(root)[1]
        for d, _, files in os.walk(base):
            gone = [os.path.join(d, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS)
                    and os.path.islink(os.path.join(d, f)) and not os.path.exists(os.path.join(d, f))]
            if gone:
                paths.append(pa.array(gone, pa.string()))
                idents.append(pa.nulls(len(gone), pa.string()))
    t = pa.table({"path": pa.chunked_array(paths, pa.string()), "identity": pa.chunked_array(idents, pa.string())})
    return t.sort_by("path")


def frames_at(path: str, times: Sequence[float], name: Optional[str] = None) -> Tuple[List[np.ndarray], int]:
    """The frames shown at ``times`` (seconds from the stream's start) of the video ``path``
    (local, or in object storage read in place through a seekable stream: nothing is
    copied), as [H, W, 3] uint8 arrays, and how many frames were decoded for them.  Each
    time costs a seek to the keyframe before it and the frames from there (a GOP at most),
    never a decode from the file's start: key frames of a day-long recording take what
    those of a minute do.  An unindexed stream (MPEG-TS) whose seek lands after the time is
    sought again earlier; where even a seek to its start does not reach the time, the
    stream is read from its first byte.  A problem of the file raises :class:`VideoError`."""
    import av

    name = name or path
    fs, p = storage.resolve(path)
    local = storage.is_local(path)
    handles: list = []

    def opened():
        src = p if local else fs.open_input_file(p)
        if not local:
            handles.append(src)
        return av.open(src)

    def shown(c, st, target: int, seek_to: Optional[int]):
        """(the frame shown at ``target``, the first frame decoded, frames decoded)."""
        if seek_to is not None:
            c.seek(seek_to, stream=st, backward=True, any_frame=False)
        first = last = None
        n = 0
        for frame in c.decode(st):
            n += 1
            beat()
            first = frame if first is None else first
            if last is not None and frame.pts is not None and frame.pts > target:
                break               # the one before is the frame shown then
            last = frame
            if frame.pts is not None and frame.pts >= target:
                break
        return last, first, n

    out: List[np.ndarray] = []
    decoded = 0
    try:
        c = opened()
        try:
            if not c.streams.video:
                raise VideoError(f"{name}: no video stream")
            st = c.streams.video[0]
            st.thread_count = 1
            tb = float(st.time_base)
            start = st.start_time or 0
            for t in times:
                target, back, last = start + int(max(0.0, t) / tb), 0.0, None
                while True:
                    seek_to = target - int(back / tb)
                    if seek_to <= start and back:        # from the first byte, in a fresh demuxer
                        c.close()
                        c = opened()
                        st = c.streams.video[0]
                        st.thread_count = 1
                        last, first, n = shown(c, st, target, None)
                        decoded += n
                        break
                    last, first, n = shown(c, st, target, seek_to)
                    decoded += n
                    if last is not None and (first.pts is None or first.pts <= target):
                        break
                    back = max(1.0, back * 2)
                if last is None:
                    raise VideoError(f"{name}: no frame decodes at {t:.2f} s")
                out.append(last.to_ndarray(format="rgb24"))
        finally:
            c.close()
    except VideoError:
        raise
    except Exception as e:  # av.error.*: not a container FFmpeg knows, or a cut file
        raise VideoError(f"{name}: cannot seek ({_first_line(e)})") from None
    finally:
        for h in handles:
            h.close()
    return out, decoded
