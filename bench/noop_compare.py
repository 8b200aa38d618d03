"""The nightly no-op of two checkouts side by side, on one archive: ``vadclip extract
ARCHIVE --out OUT`` with nothing new, run alternately from each checkout, printing each
one's median driver wall time, CPU time and peak RSS and their ratios.

    python bench/noop_compare.py --trees /path/to/old,/path/to/new [--size 100000] [--repeat 3]
                                 [--identities column,column] [--workdir /tmp/vadclip_noop_compare]

A tree is a checkout of this repository (``git worktree add /tmp/old 1de3eac``).  The
archive and its output are made once, by this checkout's ``bench/archive_scale.py``
helpers (hard links of four short real videos, their feature rows replicated under every
path, one output folder per tree, its parts keeping each path's identity as that tree's
writers do: ``--identities metadata,column`` for a tree from before 2026-12-07, whose
parts kept them in their schema metadata); each run is a process of its own started from one tree (``PYTHONPATH``).  A single
run's peak RSS varies by up to ~100 MB between runs of one commit on this machine, hence
the alternation and the medians.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import archive_scale as scale  # noqa: E402

from vadclip.io import storage  # noqa: E402
from vadclip.jobs.manifest import load_manifest  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", required=True, help="two checkouts, comma-separated: the first is the baseline")
    ap.add_argument("--size", type=int, default=100000, help="recordings in the archive (at most 260,000: "
                                                              "ext4's hard links per seed video)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--identities", default="column,column",
                    help="per tree, how its output's parts keep identities: column (since 2026-12-07) or metadata")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    trees = [os.path.abspath(t) for t in a.trees.split(",")]
    work = a.workdir or tempfile.mkdtemp(prefix="vadclip_noop_compare_")
    os.makedirs(work, exist_ok=True)
    args = ["--tiny-clip", "--decoder", "decord"]
    seed = scale._seed_videos(work)
    scale._cli(["extract", seed, "--out", os.path.join(work, "seed_out"), *args], {}, work)
    arch = os.path.join(work, "arch")
    scale._link_local(seed, arch, 0, a.size)
    template, items = scale._template(os.path.join(work, "seed_out")), load_manifest(arch)
    outs = {t: os.path.join(work, f"out{i}") for i, t in enumerate(trees)}
    for t, how in zip(trees, a.identities.split(",")):
        scale._replicate(template, items, storage.join(outs[t], "features"), identities=how)
    os.chdir(work)      # `python -c` puts the working directory first on the path: never a checkout
    got = {t: [] for t in trees}
    for _ in range(a.repeat):
        for t in trees:
            s, ru = scale._cli(["extract", arch, "--out", outs[t], *args], {"PYTHONPATH": t}, work)
            assert s["videos_skipped"] == a.size and s["videos_ok"] == 0, s
            got[t].append(ru)
    med = {t: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
           for t, rs in got.items()}
    base, new = trees
    print(f"# python bench/noop_compare.py --trees {a.trees} --size {a.size} --repeat {a.repeat} "
          f"--identities {a.identities}")
    print("| tree | driver wall s | driver CPU s | driver peak RSS MB | each run's peak RSS MB |")
    print("|---|---|---|---|---|")
    for t in trees:
        m = med[t]
        print(f"| {t} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['peak_rss_mb']:.0f} | "
              f"{', '.join(str(round(r['peak_rss_mb'])) for r in got[t])} |")
    print(f"| second / first | {med[new]['wall_s'] / med[base]['wall_s']:.2f}x | "
          f"{med[new]['cpu_s'] / med[base]['cpu_s']:.2f}x | {med[new]['peak_rss_mb'] / med[base]['peak_rss_mb']:.2f}x | |")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
