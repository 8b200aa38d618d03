"""Soak: an extraction of many short videos, 10% of them bad, with two encoder actor
processes SIGKILLed mid-job (at 20% and 50% of the videos written) and the driver killed
(SIGKILL) once, then the same command again.

    python bench/soak.py [--videos 500] [--bad-fraction 0.1] [--workdir /tmp/vadclip_soak]
    python bench/soak.py --cluster --videos 1000

``--cluster``: the same on a local multi-node Ray cluster (``ray.cluster_utils.Cluster``:
a head that offers no CPU, two worker nodes) that the command joins with ``--address``;
the driver is SIGKILLed once, and in the re-run one worker node is killed like a
preempted spot node (ungracefully) and a replacement joins.  Also prints what the node
loss cost: the videos run again and the seconds from the kill to the next commit.

Prints videos in, feature rows out, error rows, duplicates, lost good videos, good
videos wrongly marked failed and bad videos not recorded.  Target: 0 lost, 0
duplicated, 0 good videos marked failed.  Uses the tiny random-init CLIP (the
bookkeeping under faults is what is measured, not the encoder)."""
import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq


def make_archive(root: str, n: int, bad_fraction: float, seed: int = 0):
    from vadclip.video.samples import write_manifest, write_video

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    rows, bad = [], set()
    n_bad = int(round(n * bad_fraction))
    bad_idx = set(rng.choice(n, n_bad, replace=False).tolist())
    good_bytes = None
    for i in range(n):
        vid = f"soak{i:04d}"
        path = os.path.join(root, f"{vid}.mp4")
        if i in bad_idx:
            kind = i % 4
            if kind == 0:
                open(path, "wb").write(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 4)   # corrupt
            elif kind == 1:
                open(path, "wb").write(b"")                                              # empty
            elif kind == 2 and good_bytes:
                open(path, "wb").write(good_bytes[: len(good_bytes) // 3])               # truncated
            else:
                path = os.path.join(root, f"{vid}_missing.mp4")                          # missing
            bad.add(vid)
        else:
            write_video(path, int(rng.integers(32, 80)), 25.0, 64, 48, None, seed=i)
            if good_bytes is None:
                good_bytes = open(path, "rb").read()
        rows.append({"path": path, "label": "", "video_id": vid})
    write_manifest(rows, os.path.join(root, "manifest.csv"))
    return rows, bad


def ids(directory: str):
    """The video ids a reader that knows nothing of vadclip sees in a table: its Delta log's."""
    from deltalake import DeltaTable

    if not os.path.isdir(os.path.join(directory, "_delta_log")):
        return []
    return DeltaTable(directory).to_pyarrow_table(columns=["video_id"]).column("video_id").to_pylist()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=500)
    ap.add_argument("--bad-fraction", type=float, default=0.1)
    ap.add_argument("--workdir", default="/tmp/vadclip_soak")
    ap.add_argument("--kill-at", type=float, default=0.4, help="kill the driver once this fraction is written")
    ap.add_argument("--cluster", action="store_true", help="on a local multi-node cluster, a worker node killed too")
    ap.add_argument("--node-kill-at", type=float, default=0.6,
                    help="--cluster: kill a worker node (in the re-run) once this fraction is written")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    t0 = time.time()
    rows, bad = make_archive(os.path.join(a.workdir, "videos"), a.videos, a.bad_fraction)
    good = [r["video_id"] for r in rows if r["video_id"] not in bad]
    print(f"archive: {len(rows)} videos ({len(bad)} bad) written in {time.time() - t0:.0f}s")
    out = os.path.join(a.workdir, "out")
    cmd = [sys.executable, "-m", "vadclip.cli", "extract", os.path.join(a.workdir, "videos", "manifest.csv"),
           "--out", out, "--tiny-clip", "--flush-seconds", "1", "--rows-per-file", "16"]
    env = {**os.environ, "VADCLIP_PROGRESS_BARS": "0"}
    cluster = workers = None
    if a.cluster:
        from ray.cluster_utils import Cluster

        # a dead node is noticed in about 5 s (Ray's default: 15 s)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": {
            "health_check_period_ms": 1000, "health_check_failure_threshold": 5}})
        workers = [cluster.add_node(num_cpus=4) for _ in range(2)]
        cluster.wait_for_nodes()
        cmd += ["--address", cluster.address, "--num-encoders", "2", "--num-writers", "2"]
        print(f"cluster: head (0 CPUs) + 2 worker nodes of 4 CPUs at {cluster.address}")
    try:
        _runs(a, cmd, env, out, rows, good, bad, cluster, workers)
    finally:
        if cluster is not None:
            cluster.shutdown()


def _done(out):
    return len(ids(os.path.join(out, "features"))) + len(ids(os.path.join(out, "errors")))


ENCODER = b"ray::MapWorker(MapBatches(EncodeStage))"     # an encoder actor's process


def _kill_an_encoder() -> bool:
    """SIGKILL one encoder actor process of this machine (found by its Ray process
    title), as the OOM killer or a crash would."""
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if open(cmdline, "rb").read().startswith(ENCODER):
                os.kill(int(cmdline.split("/")[2]), signal.SIGKILL)
                return True
        except OSError:
            continue
    return False


def _encoder_killer(out, total, at=(0.2, 0.5)):
    """A thread that kills an encoder once the output holds each fraction ``at`` of the
    videos (over both runs); returns (thread, kills made)."""
    import threading

    kills, stop = [], threading.Event()

    def watch():
        for frac in at:
            while not stop.is_set() and not (_done(out) >= frac * total and _kill_an_encoder()):
                time.sleep(0.2)
            if stop.is_set():
                return
            kills.append(frac)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, kills, stop


def _runs(a, cmd, env, out, rows, good, bad, cluster, workers):
    import json

    t1 = time.time()
    killer, kills, stop = _encoder_killer(out, len(rows))
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    killed_at = None
    while p.poll() is None:
        done = _done(out)
        if done >= a.kill_at * len(rows):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            killed_at = done
            break
        time.sleep(0.5)
    print(f"run 1: driver SIGKILLed with {killed_at} videos written" if killed_at is not None
          else "run 1: finished before the driver kill (raise --videos)")
    t2 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    node = None
    if cluster is not None:
        import threading

        # the re-run's output is read while the node is killed (a full pipe would block it)
        got = {}
        readers = [threading.Thread(target=lambda k, f: got.__setitem__(k, f.read()), args=(k, f))
                   for k, f in (("out", p.stdout), ("err", p.stderr))]
        for t in readers:
            t.start()
        while p.poll() is None and node is None:
            done = _done(out)
            if done >= a.node_kill_at * len(rows):
                cluster.remove_node(workers[0], allow_graceful=False)
                node = {"killed_at_s": time.time() - t2, "written_at_kill": done}
                cluster.add_node(num_cpus=4)
                break
            time.sleep(0.2)
        while node is not None and p.poll() is None and _done(out) <= node["written_at_kill"]:
            time.sleep(0.2)
        if node is not None and "next_commit_s" not in node:
            node["next_commit_s"] = time.time() - t2 - node["killed_at_s"]
        p.wait()
        for t in readers:
            t.join()
        stdout, stderr = got["out"], got["err"]
    else:
        stdout, stderr = p.communicate()
    if p.returncode != 0:
        print(stderr[-3000:])
        raise SystemExit("run 2 failed")
    elapsed = time.time() - t1
    stop.set()
    if cluster is not None:
        s = json.loads(stdout[stdout.index("{"):])
        if node is None:
            print("run 2: finished before the node kill (raise --videos)")
        else:
            print(f"run 2: worker node killed {node['killed_at_s']:.1f}s in with {node['written_at_kill']} videos "
                  f"written, a replacement added; next commit {node['next_commit_s']:.1f}s after the kill; "
                  f"videos run again: {s.get('videos_redone')} (rounds: {s.get('rounds')}); "
                  f"run 2 took {time.time() - t2:.0f}s")
    feats, errs = ids(os.path.join(out, "features")), ids(os.path.join(out, "errors"))
    fc, ec = Counter(feats), Counter(errs)
    print(f"encoder actors killed: {len(kills)}; driver kills: {int(killed_at is not None)}; "
          f"extraction {elapsed:.0f}s over both runs")
    print(f"videos in: {len(rows)}  feature rows out: {len(feats)}  error rows: {len(errs)}")
    print(f"duplicated: {sum(c - 1 for c in fc.values() if c > 1) + sum(c - 1 for c in ec.values() if c > 1)}  "
          f"lost: {len([v for v in good if v not in fc])}  "
          f"good marked failed: {len([v for v in good if v in ec])}  "
          f"bad not recorded: {len([v for v in bad if v not in ec])}")


if __name__ == "__main__":
    main()
