"""Long recordings: a day-long and an hour-long recording scored end to end
(``score --videos``: decode, encode, write, score), and what each process role held at
its peak.

    python bench/long_recording.py [--hours 24] [--short-hours 1] [--size 160x120] [--fps 25]
                                   [--workdir /tmp/vadclip_long_recording]

The recordings are written with PyAV (H.264, a drifting gradient with a moving block: a
few kB a second, so a day fits on disk) and scored with the tiny random-init CLIP projecting to 512-d
features as ViT-B/16's do (the ViT-B/16 itself would take this 2-core machine half a day per hour of video: what is measured is
the pipeline's memory, not the encoder's speed).  Side by side in one run:

* the short recording, as written by default (``--segment-snippets 8192``);
* the long one, by default (kept in segments);
* the long one with segments off (``--segment-snippets`` past its length: the writer holds
  all of it, as before segments existed).

For each: exit state, wall time, frames/s, the rows written, and the peak resident memory
(``RssAnon`` and ``VmRSS``, sampled) of the decode tasks, the encoders, the writers (the actors that assemble,
commit and score) and the driver — read from /proc every 0.2 s by the process titles Ray
gives its workers (``ray::VideoWriter…``, ``…DecodeStage…``, ``…EncodeStage…``), nothing
asked of the code measured.  Scratch: the recordings are on local disk and decoded in
place (no copy), so the decode tasks' scratch is 0 bytes whatever the length.

Targets (issue #46): the day-long recording gives one feature set, scores and events, no
error row; its writer's peak RSS at most 1 GB and within 10% of the hour's.
"""
import argparse
import json
import os
import resource
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

ROLES = (("writer", ("VideoWriter",)), ("encoder", ("EncodeStage",)), ("decode", ("DecodeStage",)))


def write_recording(path: str, hours: float, width: int, height: int, fps: int) -> int:
    """An H.264 recording of ``hours`` (a gradient drifting, a block crossing every minute)."""
    import av

    n = int(round(hours * 3600 * fps))
    if os.path.exists(path) and os.path.exists(path + ".frames"):
        return int(open(path + ".frames").read())
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(path + ".tmp.mp4", "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "g": str(10 * fps)}
        for i in range(n):
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = (xx + i // 5) % 256
            img[..., 1] = (yy + i // 7) % 256
            img[..., 2] = 96
            x = (i % (60 * fps)) * width // (60 * fps)
            img[height // 3: height // 3 + 12, x: x + 12] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(path + ".tmp.mp4", path)
    open(path + ".frames", "w").write(str(n))
    return n


class Peaks:
    """The highest resident memory seen per role while a Ray worker process holds that
    role's title (a pooled worker may have run other tasks before: its lifetime VmHWM would
    not be the role's): ``anon``, the process's own memory (RssAnon), and ``rss`` (VmRSS),
    which also counts the pages of Ray's shared object store the process has mapped and
    touched (they grow with the bytes that passed through it, and are not its own)."""

    def __init__(self, every: float = 0.2) -> None:
        self.peak = {f"{r}_{k}": 0 for r, _ in ROLES for k in ("anon", "rss")}
        self.writer_anon: list = []      # (time, the writers' largest own memory then): does it grow, or plateau?
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._t.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            writer = 0
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    title = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode("utf-8", "replace")
                    if not title.startswith("ray::"):
                        continue
                    got = {line.split(":")[0]: int(line.split()[1]) << 10 for line in open(f"/proc/{pid}/status")
                           if line.startswith(("VmRSS:", "RssAnon:"))}
                except (OSError, ValueError, IndexError):
                    continue
                for role, keys in ROLES:
                    if any(k in title for k in keys):
                        self.peak[f"{role}_rss"] = max(self.peak[f"{role}_rss"], got.get("VmRSS", 0))
                        self.peak[f"{role}_anon"] = max(self.peak[f"{role}_anon"], got.get("RssAnon", 0))
                        if role == "writer":
                            writer = max(writer, got.get("RssAnon", 0))
            if writer:
                self.writer_anon.append((time.time(), writer))

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        return dict(self.peak)

    def quarters(self) -> list:
        """The writers' peak own memory (MB) in each quarter of the time they lived."""
        if not self.writer_anon:
            return []
        t0, t1 = self.writer_anon[0][0], self.writer_anon[-1][0]
        q = [0, 0, 0, 0]
        for t, b in self.writer_anon:
            i = min(3, int(4 * (t - t0) / max(1e-9, t1 - t0)))
            q[i] = max(q[i], b)
        return [round(b / 2**20) for b in q]


def run_one(name: str, video: str, frames: int, fps: int, work: str, segment: int, model: str) -> dict:
    """One recording scored into a folder of its own, in this process (its driver)."""
    import ray

    from vadclip.io import layout
    from vadclip.io.parts import read_table
    from vadclip.jobs.extract import ExtractOptions
    from vadclip.jobs.score import ScoreOptions, run_score
    from vadclip.model.config import ClipSpec

    man = os.path.join(work, f"{name}.csv")
    with open(man, "w") as f:
        f.write(f"path,label,video_id\n{video},,{name}\n")
    out = os.path.join(work, "out", name)
    eo = ExtractOptions(clip=ClipSpec.tiny(512), batch_size=256, precision="fp32", segment_snippets=segment,
                        stall_timeout_s=600)
    peaks = Peaks()
    t0 = time.time()
    s = run_score(model, out, videos=man, extract_opts=eo, opts=ScoreOptions(), log=lambda *_: None)
    wall = time.time() - t0
    got = peaks.stop()
    feats = read_table(layout.features_dir(out), ["video_id", "crop", "snippet_count"])
    errs = len(layout.failed_videos(out))
    scores = read_table(layout.scores_dir(out), ["video_id", "snippet_count"])
    ray.shutdown()
    return {"run": name, "frames": frames, "hours": round(frames / fps / 3600, 3), "segment_snippets": segment,
            "wall_s": round(wall, 1), "frames_per_s": round(frames / wall),
            "feature_rows": feats.num_rows, "snippets": int(sum(feats.column("snippet_count").to_pylist())),
            "error_rows": errs, "score_rows": scores.num_rows,
            "scored_snippets": int(sum(scores.column("snippet_count").to_pylist())), "events": s.get("events"),
            **{f"{r}_mb": round(b / 2**20) for r, b in got.items()}, "writer_anon_mb_by_quarter": peaks.quarters()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--short-hours", type=float, default=1.0)
    ap.add_argument("--whole-hours", type=float, default=None,
                    help="the length of the recording written with segments off (default --hours)")
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--workdir", default="/tmp/vadclip_long_recording")
    ap.add_argument("--one", help=argparse.SUPPRESS)        # internal: NAME,VIDEO,FRAMES,SEGMENT in its own process
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    os.makedirs(a.workdir, exist_ok=True)
    model = os.path.join(a.workdir, "model.pt")
    if a.one:
        name, video, frames, segment = a.one.split(",")
        r = run_one(name, video, int(frames), a.fps, a.workdir, int(segment), model)
        r["driver_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print("RESULT " + json.dumps(r), flush=True)
        return
    import subprocess

    from vadclip import VadConfig, build_model
    from vadclip.model.checkpoint import save_checkpoint
    from vadclip.model.config import ClipSpec

    if not os.path.exists(model):
        # 512-d features, as ViT-B/16's: what a writer holds per snippet is what it would hold
        save_checkpoint(build_model(VadConfig.from_preset("ucf", clip=ClipSpec.tiny(512))), model)
    t = time.time()
    short = os.path.join(a.workdir, f"short_{a.short_hours}h_{a.size}.mp4")
    long = os.path.join(a.workdir, f"long_{a.hours}h_{a.size}.mp4")
    n_short = write_recording(short, a.short_hours, w, h, a.fps)
    n_long = write_recording(long, a.hours, w, h, a.fps)
    whole_h = a.hours if a.whole_hours is None else a.whole_hours
    whole = long if whole_h == a.hours else os.path.join(a.workdir, f"long_{whole_h}h_{a.size}.mp4")
    n_whole = n_long if whole == long else write_recording(whole, whole_h, w, h, a.fps)
    print(f"recordings written in {time.time() - t:.0f} s: {n_short} and {n_long} frames "
          f"({os.path.getsize(short) >> 20} MB, {os.path.getsize(long) >> 20} MB)", flush=True)
    runs = [("short", short, n_short, 8192), ("long", long, n_long, 8192), ("long_whole", whole, n_whole, 1 << 40)]
    results = []
    for name, video, n, seg in runs:
        shutil_rm(os.path.join(a.workdir, "out", name))
        p = subprocess.run([sys.executable, __file__, "--one", f"{name},{video},{n},{seg}", "--fps", str(a.fps),
                            "--workdir", a.workdir], capture_output=True, text=True)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: exit {p.returncode}\n{p.stderr[-2000:]}", flush=True)
            continue
        results.append(json.loads(line[7:]))
        print(json.dumps(results[-1]), flush=True)
    cols = ["run", "hours", "segment_snippets", "wall_s", "frames_per_s", "feature_rows", "snippets", "error_rows",
            "score_rows", "scored_snippets", "events", "decode_anon_mb", "encoder_anon_mb", "writer_anon_mb",
            "writer_rss_mb", "writer_anon_mb_by_quarter", "driver_peak_mb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    by = {r["run"]: r for r in results}
    if "short" in by and "long" in by:
        print(f"writer peak (own memory), long / short: "
              f"{by['long']['writer_anon_mb'] / max(1, by['short']['writer_anon_mb']):.3f}")
    if "long" in by and "long_whole" in by:
        print(f"writer peak (own memory), segments off / on (long): "
              f"{by['long_whole']['writer_anon_mb'] / max(1, by['long']['writer_anon_mb']):.3f}")


def shutil_rm(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
