"""Small real H.264 videos with planted anomalies, written with PyAV (demo, tests)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# abnormal class → how it looks: (colour of the event, does it move fast)
EVENT_STYLES = {
    "Explosion": ((255, 140, 0), False),
    "Fighting": ((220, 20, 60), True),
    "RoadAccidents": ((30, 144, 255), True),
}


def write_video(path: str, num_frames: int, fps: float = 25.0, width: int = 96, height: int = 64,
                event: Optional[Tuple[int, int]] = None, style: str = "Explosion", seed: int = 0) -> None:
    """A drifting textured background; during ``event`` = [start, end) frames a
    coloured block (static flash or fast-moving object, by ``style``) appears."""
    import av

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi)
    tint = rng.integers(60, 120, size=3)
    colour, moving = EVENT_STYLES.get(style, ((255, 255, 0), False))
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(num_frames):
            wave = 0.5 + 0.5 * np.sin(xx / 9.0 + yy / 13.0 + phase + i * 0.05)
            img = (tint[None, None, :] * (0.6 + 0.4 * wave[..., None])).astype(np.uint8)
            if event is not None and event[0] <= i < event[1]:
                bw, bh = 3 * width // 4, 3 * height // 4
                if moving:
                    x0 = int((i * 7) % max(1, width - bw))
                    y0 = int((i * 5) % max(1, height - bh))
                else:
                    x0, y0 = width // 8, height // 8
                img[y0:y0 + bh, x0:x0 + bw] = colour
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for pkt in stream.encode(frame):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)


def write_numbered_video(path: str, num_frames: int, codec: str = "libx264", fps: int = 25, height: int = 48,
                         options: Optional[Dict[str, str]] = None, times: Optional[Sequence[float]] = None) -> None:
    """A video whose frame ``i`` shows one bright column at ``x = 4 i + 2`` on a dark
    background (width ``4 num_frames + 4``), so a decoded frame says which frame it is
    (:func:`frame_number`) whatever decoded it.  The container follows the extension
    (``.ts`` MPEG-TS, ``.mpg`` MPEG-PS, ``.mp4``); libx264 with B-frames by default.
    ``times``: each frame's presentation time (s; a variable-frame-rate video, in
    milliseconds), else ``i / fps``."""
    from fractions import Fraction

    import av

    if times is not None and len(times) != num_frames:
        raise ValueError(f"{len(times)} times for {num_frames} frames")
    width = 4 * num_frames + 4
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options if options is not None else (
            {"preset": "medium", "bf": "3", "g": "12"} if codec in ("libx264", "libx265") else {"g": "12", "bf": "2"})
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            img = np.full((height, width, 3), 16, np.uint8)
            img[:, 4 * i + 1:4 * i + 4] = 235
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
            for pkt in stream.encode(frame):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)


def frame_number(frame: np.ndarray) -> int:
    """Which frame of :func:`write_numbered_video` ``frame`` ([H, W, 3]) is."""
    return int(round((int(np.argmax(frame.astype(np.float32).mean(axis=(0, 2)))) - 2) / 4))


def make_sample_set(out_dir: str, n_normal: int, n_abnormal: int, classes: Sequence[str] = tuple(EVENT_STYLES),
                    frames_range=(160, 320), fps_choices=(24.0, 25.0, 30.0), sizes=((96, 64), (80, 80), (112, 64)),
                    seed: int = 0, prefix: str = "clip") -> Tuple[List[Dict], List[Dict]]:
    """Write ``n_normal + n_abnormal`` videos; returns (manifest rows, ground-truth rows)."""
    rng = np.random.default_rng(seed)
    manifest, gt = [], []
    for i in range(n_normal + n_abnormal):
        n = int(rng.integers(frames_range[0], frames_range[1] + 1))
        fps = float(fps_choices[i % len(fps_choices)])
        w, h = sizes[i % len(sizes)]
        vid = f"{prefix}{i:03d}"
        path = os.path.join(out_dir, f"{vid}.mp4")
        if i < n_normal:
            write_video(path, n, fps, w, h, None, seed=seed * 1000 + i)
            manifest.append({"path": path, "label": "Normal", "video_id": vid})
        else:
            cls = classes[(i - n_normal) % len(classes)]
            ln = int(rng.integers(n // 5, n // 3))
            s = int(rng.integers(0, n - ln))
            write_video(path, n, fps, w, h, (s, s + ln), cls, seed=seed * 1000 + i)
            manifest.append({"path": path, "label": cls, "video_id": vid})
            gt.append({"video_id": vid, "start_frame": s, "end_frame": s + ln, "label": cls})
    return manifest, gt


def write_manifest(rows: Sequence[Dict], path: str) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "label", "video_id"])
        w.writeheader()
        w.writerows(rows)
