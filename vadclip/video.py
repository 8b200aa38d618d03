"""Video decoding with decord: one frame per snippet, resize + centre crop (or 5/10
crops) to the CLIP input size, in bounded chunks so memory does not grow with
video length."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import storage

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")


class VideoError(RuntimeError):
    """A video that cannot be decoded; the message names the file and the problem."""


@dataclass
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int

    def snippet_count(self, snippet_len: int) -> int:
        return -(-self.num_frames // snippet_len)


@contextlib.contextmanager
def fetched(path: str) -> Iterator[str]:
    """A local file holding the video ``path`` (local or in object storage) for the
    length of the ``with``: a missing or empty object is a :class:`VideoError` of this
    video; a failing store (timeouts, refused connections, credentials) raises
    ``OSError``, a problem of the environment that Ray retries and never records
    against the video.  Remote videos are streamed to node-local scratch, removed
    afterwards (failures included)."""
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
    try:
        with storage.local_file(path, suffix=storage.extension(path)) as local:
            yield local
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found (removed while being read)") from None


def open_video(path: str, name: Optional[str] = None):
    """decord reader and info of a local video file; errors name ``name`` (default ``path``)."""
    import decord

    name = name or path
    if not os.path.isfile(path):
        raise VideoError(f"{name}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{name}: empty file (0 bytes)")
    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises RuntimeError/DECORDError
        raise VideoError(f"{name}: not a readable video ({str(e).splitlines()[0][:200]})") from None
    n = len(vr)
    if n <= 0:
        raise VideoError(f"{name}: video has no frames")
    try:
        h, w = vr[0].shape[:2]
    except Exception as e:
        raise VideoError(f"{name}: cannot decode the first frame ({str(e).splitlines()[0][:200]})") from None
    fps = float(vr.get_avg_fps() or 0.0)
    if not np.isfinite(fps) or fps <= 0:
        fps = 30.0
    return vr, VideoInfo(name, n, fps, int(h), int(w))


def snippet_frame_indices(num_frames: int, snippet_len: int) -> np.ndarray:
    """The frame sampled for each ``snippet_len``-frame snippet: its middle frame
    (clamped to the last frame for a short final snippet)."""
    starts = np.arange(0, num_frames, snippet_len)
    return np.minimum(starts + snippet_len // 2, num_frames - 1)


def crop_views(frames: np.ndarray, size: int, crops: int) -> np.ndarray:
    """[N, H, W, 3] uint8 → [N, crops, 3, size, size] uint8.

    crops=1: resize the short side to ``size`` and centre crop (CLIP preprocessing).
    crops=5/10: resize the short side to ``size*256/224``; centre, top-left, top-right,
    bottom-left, bottom-right; for 10 the same five of the horizontally flipped frame."""
    if crops not in (1, 5, 10):
        raise ValueError(f"crops must be 1, 5 or 10, got {crops}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
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
    return torch.stack(views, dim=1).numpy()


def iter_snippet_chunks(path: str, snippet_len: int = 16, size: int = 224, crops: int = 1,
                        chunk_snippets: int = 32, name: Optional[str] = None) -> Tuple[VideoInfo, Iterator[np.ndarray]]:
    """Open a local video file and return (info, iterator of [n, crops, 3, size, size]
    uint8 chunks); errors name ``name`` (the user's path or URI, default ``path``)."""
    name = name or path
    vr, info = open_video(path, name)
    idx = snippet_frame_indices(info.num_frames, snippet_len)

    def gen():
        for s in range(0, len(idx), chunk_snippets):
            sel = idx[s:s + chunk_snippets]
            try:
                frames = vr.get_batch(sel.tolist()).asnumpy()
            except Exception as e:
                raise VideoError(f"{name}: decoding failed at frame {int(sel[0])} of {info.num_frames} "
                                 f"(truncated or corrupt?): {str(e).splitlines()[0][:200]}") from None
            if frames.shape[0] != len(sel):
                raise VideoError(f"{name}: decoder returned {frames.shape[0]} frames, expected {len(sel)}")
            yield crop_views(frames, size, crops)

    return info, gen()


def list_videos(root: str) -> List[str]:
    """Video files under a folder or object-store prefix (recursive, sorted)."""
    return storage.list_files(root, recursive=True, suffixes=VIDEO_EXTENSIONS)
