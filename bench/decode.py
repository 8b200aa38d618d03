"""Decode paths for extraction, side by side on the same files in one run (issue #14).

Videos are written with PyAV (H.264, yuv420p) at several resolutions and GOP lengths;
each path must deliver the middle frame of every 16-frame snippet as RGB.  Printed per
file: frames of video decoded per second (one thread unless the path says otherwise),
the ratio to "PyAV decodes every frame, converts only the sampled ones" (the target:
the extraction job's path ≥ 0.9 of it), and the largest pixel difference from that
path's frames (same frames selected ⇒ differences are colour-conversion rounding).
The extraction job decodes with ``torchcodec_frames_at`` where torchcodec loads (FFmpeg's
shared libraries installed) and with ``decord_get_batch`` elsewhere (``--decoder``).
For those two the job also reads each frame's timestamp in one pass over the packets
(``stream_times``, no decoding; issue #35): printed per file as its time beside each
seeking path's, and the share it adds.

    python bench/decode.py                       # 320x240 … 1920x1080, GOP 12 and 250
    python bench/decode.py --sizes 640x360 --frames 160 --repeat 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def write_video(path: str, w: int, h: int, frames: int, gop: int, fps: int = 25) -> None:
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "veryfast", "crf": "23"}
        for i in range(frames):
            img = np.kron(np.roll(base, i, axis=1), np.ones((8, 8, 1), np.uint8))[:h, :w]
            img = np.ascontiguousarray(img)
            img[(i * 3) % h: (i * 3) % h + h // 10, : w // 3] = (255, 80, 0)   # something moving
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def snippet_indices(n: int, snippet_len: int = 16) -> np.ndarray:
    from vadclip.video.decode import snippet_frame_indices

    return snippet_frame_indices(n, snippet_len)


# ---------------------------------------------------------------- the candidate paths
def decord_get_batch(path):
    """The job's decord path: its reader's ``get`` on the snippet indices, in chunks of 32."""
    from vadclip.video.decode import DecordReader

    return _reader_chunks(DecordReader(path, path))


def decord_sequential(path, threads=1):
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    n = len(vr)
    want = set(snippet_indices(n).tolist())
    out = []
    for i in range(n):
        f = vr.next()
        if i in want:
            out.append(f.asnumpy())
    return np.stack(out), n


def pyav_every_frame(path, threads=False, snippet_len=16):
    """Decode every frame (P-frames need their predecessors anyway); convert to RGB only
    the sampled ones.  The frame count is known only at the end, so the last snippet's
    frame is resolved then (its middle, or the last frame of a short snippet)."""
    import av

    out, n, last, pending = [], 0, None, False
    with av.open(path) as c:
        st = c.streams.video[0]
        st.thread_type = "AUTO" if threads else "SLICE"
        if not threads:
            st.codec_context.thread_count = 1
        for i, fr in enumerate(c.decode(st)):
            n = i + 1
            if i % snippet_len == 0:
                pending = True                 # a new snippet starts: its frame is still to come
            if pending and i % snippet_len == snippet_len // 2:
                out.append(fr.to_ndarray(format="rgb24"))
                pending = False
            last = fr
        if pending and last is not None:       # a short last snippet: its last frame
            out.append(last.to_ndarray(format="rgb24"))
    return np.stack(out), n


def pyav_threaded(path):
    return pyav_every_frame(path, threads=True)


def torchcodec_frames_at(path):
    """The job's torchcodec path on the CPU (``get_frames_at``, one FFmpeg thread), in
    chunks of 32."""
    from vadclip.video.decode import TorchcodecReader

    return _reader_chunks(TorchcodecReader(path, path, "cpu"))


def _reader_chunks(reader):
    idx = snippet_indices(reader.num_frames)
    out = [reader.get(idx[s:s + 32].tolist()) for s in range(0, len(idx), 32)]
    return np.concatenate(out), reader.num_frames


PATHS = {
    "pyav_every_frame": pyav_every_frame,               # the baseline of the target
    "pyav_every_frame_threads": pyav_threaded,
    "decord_get_batch": decord_get_batch,
    "decord_sequential": decord_sequential,
}

from vadclip.video.decode import torchcodec_missing  # noqa: E402

if torchcodec_missing() is None:         # torchcodec needs FFmpeg's shared libraries on the system
    PATHS["torchcodec_frames_at"] = torchcodec_frames_at
else:
    print(f"(torchcodec left out: {torchcodec_missing()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="320x240,640x360,1280x720,1920x1080")
    ap.add_argument("--gops", default="12,250")
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds; the best time of each path")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"{'video':>18} {'path':>26} {'frames/s':>9} {'ratio':>6} {'max|diff|':>9}")
    with tempfile.TemporaryDirectory() as d:
        for size in args.sizes.split(","):
            w, h = map(int, size.split("x"))
            for gop in map(int, args.gops.split(",")):
                path = os.path.join(d, f"v{w}x{h}_g{gop}.mp4")
                write_video(path, w, h, args.frames, gop)
                best = {k: float("inf") for k in PATHS}
                frames = {}
                for _ in range(args.repeat):                   # alternate the paths, keep each one's best
                    for name, fn in PATHS.items():
                        t0 = time.perf_counter()
                        frames[name], n = fn(path)
                        best[name] = min(best[name], time.perf_counter() - t0)
                from vadclip.video.decode import stream_times

                t_times = float("inf")
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    if stream_times(path) is None:
                        raise SystemExit(f"{path}: no timestamps read")
                    t_times = min(t_times, time.perf_counter() - t0)
                ref = frames["pyav_every_frame"].astype(np.int16)
                for name in PATHS:
                    got = frames[name]
                    same = got.shape == ref.shape
                    diff = int(np.abs(got.astype(np.int16) - ref).max()) if same else -1
                    fps = n / best[name]
                    print(f"{f'{w}x{h} gop {gop}':>18} {name:>26} {fps:9.1f} "
                          f"{best['pyav_every_frame'] / best[name]:6.2f} {diff if same else 'SHAPE':>9}")
                for name in ("torchcodec_frames_at", "decord_get_batch"):
                    if name in best:
                        print(f"{f'{w}x{h} gop {gop}':>18} {'+ timestamps pass':>26} {t_times * 1e3:7.1f}ms "
                              f"= {t_times / best[name]:.1%} of {name}'s decode time")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
