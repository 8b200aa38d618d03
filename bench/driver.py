"""What the driver process spends on the features written: CPU seconds per GB and peak
memory, as the marginal cost between a short-video and a long-video run of the real
extraction job — the workers writing (the job as it is: a Datasink sending chunks to
writer actors) side by side with the driver as the sink (the job before: every encoded
chunk pulled to the driver with ``iter_rows``, stitched and written there).

    python bench/driver.py [--videos 32] [--short 48] [--long 6400] [--wide-dim 4096] [--crops 10] [--rounds 3]

Cheap stages, so that bytes, not the encoder, set the pace: small videos (64x48), a
tiny random-init CLIP at 32x32 pixels widened to 512-d features (as ViT-B-16 writes).
Target: at most 1 s of driver CPU per GB, and a driver peak memory that does not grow
with video length (measured as the growth of the driver's resident memory during each
run over what it held at the run's start, since earlier runs in the same process leave
memory behind).

Two marginal costs per GB, each from medians of alternating rounds:
* short → long videos (the issue's measure): more bytes, but also more chunks, more
  tasks and a longer run; on this 2-core machine, whose encoders produce ~15 MB/s, it
  is dominated by what the driver spends per second of a running pipeline (Ray Data's
  scheduling loop), not by the bytes;
* long → long at ``--wide-dim`` features (the same videos, chunks and tasks; 8x the
  bytes): what the bytes themselves cost the driver.  This is the one that caps a
  cluster: a driver core coordinates at most 1 / (s/GB) GB of features per second.
"""
import argparse
import dataclasses
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from vadclip.clip.spec import ClipSpec  # noqa: E402
from vadclip.io.features import FEATURE_SCHEMA, ERROR_SCHEMA, feature_row  # noqa: E402
from vadclip.io.parts import PartWriter, new_run_id  # noqa: E402
from vadclip.io import provenance  # noqa: E402
from vadclip.jobs import extract  # noqa: E402
from vadclip.jobs.cluster import ensure_ray  # noqa: E402
from vadclip.jobs.stages import run_stages  # noqa: E402
from vadclip.video.samples import write_manifest, write_video  # noqa: E402

CLIP = ClipSpec("vadclip-tiny", None, {"embed_dim": 512, "vision_cfg": {
    "image_size": 32, "layers": 1, "width": 32, "patch_size": 32, "head_width": 16, "pool_type": "avg"}})


class RSS:
    """Peak resident memory of this process over a run (sampled every 20 ms)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self.start = self._now()     # what earlier runs in this process left resident
        threading.Thread(target=self._run, daemon=True).start()

    def _now(self):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._now())

    def stop(self):
        self._stop.set()
        return max(self.peak, self._now())


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def driver_as_sink(source, out, opts):
    """The job before: the same decode → encode pipeline, every chunk pulled to the
    driver, stitched and written there (kept here, not in the package, for comparison)."""
    job = extract.ExtractJob(source, out, opts)
    job.check(lambda *_: None)
    job.plan(lambda *_: None)     # a new folder: nothing to replace, no lease needed by this driver-side writer
    plan = job.state
    run_id = new_run_id()
    fw = PartWriter(plan.output.rows_dir, provenance.with_provenance(FEATURE_SCHEMA, plan.prov), opts.rows_per_file,
                    run_id, opts.flush_seconds, identities=True)
    ew = PartWriter(plan.output.errors_dir, ERROR_SCHEMA, 64, run_id, opts.flush_seconds, identities=True)
    pending = {}
    (window,) = extract._datasets(plan.todo)
    for row in run_stages(window, extract.extraction_stages(plan, job.checked.opts, lambda *_: None)).iter_rows():
        fw.tick()
        if row["error"]:
            continue
        st = pending.setdefault(row["video_id"], {"chunks": {}, "meta": row})
        st["chunks"][int(row["chunk"])] = np.asarray(row["features"], np.float32)
        if len(st["chunks"]) == int(row["n_chunks"]):
            pending.pop(row["video_id"])
            feats = np.concatenate([st["chunks"][k] for k in range(int(row["n_chunks"]))], axis=0)
            m = st["meta"]
            fw.add([dict(feature_row(row["video_id"], m["path"], m["label"] or None, c, m["fps"], m["num_frames"],
                                     feats[:, c]), input_identity=m["input_identity"]) for c in range(feats.shape[1])])
    fw.flush()
    ew.flush()


def one_run(way, source, out, opts):
    rss = RSS()
    c0, t0 = cpu(), time.time()
    if way == "workers write":
        extract.run_extract(source, out, opts, log=lambda *_: None)
    else:
        driver_as_sink(source, out, opts)
    c1, t1 = cpu(), time.time()
    peak = rss.stop()
    grew = peak - rss.start
    import pyarrow.parquet as pq

    t = pq.read_table(os.path.join(out, "features"), columns=["snippet_count", "feature_dim"])
    gb = sum(s * d * 4 for s, d in zip(t.column("snippet_count").to_pylist(), t.column("feature_dim").to_pylist())) / 1e9
    return {"cpu_s": c1 - c0, "wall_s": t1 - t0, "gb": gb, "peak_mb": peak, "grew_mb": grew}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--short", type=int, default=48, help="frames of a short video")
    ap.add_argument("--long", type=int, default=6400, help="frames of a long video")
    ap.add_argument("--wide-dim", type=int, default=4096, help="feature width of the wide run (same work, more bytes)")
    ap.add_argument("--crops", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64, help="images per encoder forward pass (the job's default)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="vadclip-bench-driver-")
    sources = {}
    for kind, frames in (("short", a.short), ("long", a.long)):
        rows = []
        for i in range(a.videos):
            p = os.path.join(work, kind, f"{kind}{i:03d}.mp4")
            write_video(p, frames, width=64, height=48, seed=i)
            rows.append({"path": p, "label": "Normal", "video_id": f"{kind}{i:03d}"})
        write_manifest(rows, os.path.join(work, kind, "manifest.csv"))
        sources[kind] = os.path.join(work, kind, "manifest.csv")
    ensure_ray(progress_bars=False)
    opts = extract.ExtractOptions(clip=CLIP, crops=a.crops, batch_size=a.batch_size, precision="fp32",
                                  decoder="decord", flush_seconds=60.0)
    wide = dataclasses.replace(opts, clip=ClipSpec(CLIP.model, None, dict(CLIP.kwargs, embed_dim=a.wide_dim)))
    res = {}
    # warm-up (actor start-up, imports), then each way short/long, alternating
    one_run("workers write", sources["short"], os.path.join(work, "out-warm"), opts)
    c0 = cpu()
    time.sleep(10)
    idle = (cpu() - c0) / 10     # what the driver process spends per second with Ray idle
    print(f"driver with Ray idle: {idle:.4f} CPU-s per second", flush=True)
    runs = {}
    for r in range(a.rounds):   # alternating rounds; the median of each is reported
        for way in ("workers write", "driver as sink"):
            for kind in ("short", "long", "wide"):
                out = os.path.join(work, f"out-{way.split()[0]}-{kind}")
                shutil.rmtree(out, ignore_errors=True)
                src = sources["long" if kind == "wide" else kind]
                runs.setdefault((way, kind), []).append(one_run(way, src, out, wide if kind == "wide" else opts))
                x = runs[(way, kind)][-1]
                print(f"round {r + 1} {way:15s} {kind:5s}: {x['gb'] * 1e3:8.1f} MB of features, driver "
                      f"{x['cpu_s']:6.2f} CPU-s, wall {x['wall_s']:6.1f} s, driver peak RSS {x['peak_mb']:7.0f} MB "
                      f"(+{x['grew_mb']:.0f} MB during the run)",
                      flush=True)
    for key, xs in runs.items():
        res[key] = {k: float(np.median([x[k] for x in xs])) for k in xs[0]}
    per_gb, per_byte_gb = {}, {}
    for way in ("workers write", "driver as sink"):
        s, lg, wd = res[(way, "short")], res[(way, "long")], res[(way, "wide")]
        per_gb[way] = (lg["cpu_s"] - s["cpu_s"]) / (lg["gb"] - s["gb"])
        per_byte_gb[way] = (wd["cpu_s"] - lg["cpu_s"]) / (wd["gb"] - lg["gb"])
        rate = lg["cpu_s"] / lg["wall_s"]
        # the cap: the feature rate of the wide run over the share of one core the driver needed for it
        mbps, share = wd["gb"] * 1e3 / wd["wall_s"], wd["cpu_s"] / wd["wall_s"]
        print(f"{way:15s}: wide run {mbps:.1f} MB/s of features with the driver at {share * 100:.1f}% of one core: "
              f"one driver core would coordinate about {mbps / max(share, 1e-6):,.0f} MB/s")
        print(f"{way:15s}: short -> long videos: marginal driver CPU {per_gb[way]:6.2f} s/GB; the same work with "
              f"{a.wide_dim}-d features: {per_byte_gb[way]:6.2f} s/GB (target <= 1; one driver core coordinates "
              f"{1 / max(per_byte_gb[way], 1e-3):.1f} GB/s); {rate:.3f} driver CPU-s per second of the long run; "
              f"driver RSS growth during a run: short +{s['grew_mb']:.0f} MB, long +{lg['grew_mb']:.0f} MB, "
              f"wide +{wd['grew_mb']:.0f} MB")
    print(f"driver CPU per GB, workers write vs driver as sink: short -> long "
          f"{per_gb['workers write'] / per_gb['driver as sink']:.3f}, bytes alone "
          f"{per_byte_gb['workers write'] / per_byte_gb['driver as sink']:.3f}")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
