"""Scoring memory and throughput: peak driver RSS while scoring a synthetic archive of
N and 10×N videos (streaming: the peak should stay flat), and snippets/s.

    python bench/score.py [--videos 1000] [--snippets 100]

The driver's resident memory climbs for the first few hundred videos (allocator
pools, Ray Data prefetch buffers, then the MLflow import at the end) and then holds;
N should be past that warm-up so that the N → 10×N comparison measures growth with
the archive, not start-up.
"""
import argparse
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, numpy as np
from vadclip import build_model, tiny_config
from vadclip.model.checkpoint import save_checkpoint
from vadclip.io.features import feature_row, write_feature_table
from vadclip.jobs.cluster import ensure_ray
from vadclip.jobs.score import ScoreOptions, run_score
d, n, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = tiny_config("ucf", visual_length=256)
m = build_model(cfg); m.freeze_text(); save_checkpoint(m, os.path.join(d, "m.pt"))
rng = np.random.default_rng(0)
os.makedirs(os.path.join(d, "f"), exist_ok=True)
for part in range(0, n, 100):
    rows = [feature_row(f"v{i}", f"v{i}.mp4", "Normal", 0, 30.0, t * 16, rng.normal(size=(t, 32)).astype(np.float32))
            for i in range(part, min(n, part + 100))]
    write_feature_table(rows, os.path.join(d, "f", f"part-{part:06d}.parquet"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ensure_ray(progress_bars=False)
s = run_score(os.path.join(d, "m.pt"), os.path.join(d, "o"), features=os.path.join(d, "f"),
              opts=ScoreOptions(max_plots=0), tracking_uri="sqlite:///" + os.path.join(d, "ml.db"), log=lambda *_: None)
print(json.dumps({"videos": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "snippets_per_s": s["snippets_per_s"]}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--snippets", type=int, default=100)
    a = ap.parse_args()
    import json

    peaks = []
    for n in (a.videos, 10 * a.videos):
        with tempfile.TemporaryDirectory() as d:
            out = subprocess.run([sys.executable, "-c", CHILD, d, str(n), str(a.snippets)], capture_output=True,
                                 text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if not line:
                raise SystemExit(out.stderr[-2000:])
            print(line[-1])
            peaks.append(json.loads(line[-1])["peak_rss_mb"])
    print(f"peak driver RSS {peaks[0]:.0f} MB -> {peaks[1]:.0f} MB for 10x the archive "
          f"(x{peaks[1] / peaks[0]:.2f}; flat means close to x1.00)")


if __name__ == "__main__":
    main()
