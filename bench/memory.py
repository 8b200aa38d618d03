"""Peak memory of a Ray Train worker on a UCF-Crime-sized feature set.

    python bench/memory.py [--videos 1610] [--crops 10] [--max-len 256] [--workers 2]
                           [--steps 4] [--micro-batch 16] [--dir /tmp/vadclip-memory]

Writes a synthetic feature set the size of UCF-Crime's training list (1,610 videos x
10 crops, 64 to ``--max-len`` snippets each, 512-d float32; about 5 GB of Parquet),
trains the UCF preset (64 normal + 64 abnormal per step) for one epoch cut to
``--steps`` steps with a random-init CLIP of width 512, and prints each worker's
peak memory as the workers report it (maximum over ranks): private (anonymous)
memory, sampled every 50 ms, and ``ru_maxrss``, which also counts the object-store
pages a worker has read (shared memory, capped by Ray's object-store size) beside the size of a worker's shard in the training view — what a worker that
materialised its shard would hold on top.  Target: below 2 GB per worker.  It trains
twice on the same set: the whole per-rank batch in one pass, and in micro-batches of
``--micro-batch`` rows (gradient accumulation: the same step, less activation memory).

The workers stream their shard once into node-local disk (``training.ShardCache``)
and read one batch at a time back, so the peak should not grow with the set.
"""
import argparse
import os
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vadclip.model.config import UCF_CLASSES, tiny_config  # noqa: E402
from vadclip.io.features import FEATURE_SCHEMA  # noqa: E402


def write_set(out: str, videos: int, crops: int, max_len: int, dim: int = 512, per_file: int = 200) -> int:
    """UCF-like rows (800 normal videos, the rest spread over the 13 classes), written
    straight to Parquet files of ``per_file`` rows; returns the bytes written."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    abnormal = [k for k, _ in UCF_CLASSES[1:]]
    rows, n_file = [], 0

    def flush():
        nonlocal rows, n_file
        if rows:
            pq.write_table(pa.Table.from_pylist(rows, schema=FEATURE_SCHEMA),
                           os.path.join(out, f"part-{n_file:05d}.parquet"), compression="none")
            rows, n_file = [], n_file + 1

    for v in range(videos):
        label = "Normal" if v < min(800, videos // 2) else abnormal[v % len(abnormal)]
        t = int(rng.integers(64, max_len + 1))
        for c in range(crops):
            f = rng.standard_normal((t, dim), dtype=np.float32)
            rows.append({"video_id": f"v{v:05d}", "path": f"v{v:05d}.mp4", "label": label, "crop": c,
                         "fps": 30.0, "num_frames": t * 16, "snippet_count": t, "feature_dim": dim,
                         "features": f.reshape(-1)})
            if len(rows) == per_file:
                flush()
    flush()
    return sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=1610)
    ap.add_argument("--crops", type=int, default=10)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/vadclip-memory")
    a = ap.parse_args()

    import mlflow
    import ray

    from vadclip.jobs.train import run_train

    data = os.path.join(a.dir, "train")
    t0 = time.time()
    if os.path.isdir(data):
        shutil.rmtree(data)
    size = write_set(data, a.videos, a.crops, a.max_len)
    rows = a.videos * a.crops
    print(f"feature set: {rows} rows ({a.videos} videos x {a.crops} crops), {size / 2**30:.2f} GiB Parquet "
          f"written in {time.time() - t0:.0f} s")
    cfg = tiny_config("ucf", embed_dim=512, epochs=1)
    ray.init(num_cpus=max(4, a.workers + 2), include_dashboard=False, log_to_driver=False)
    uri = f"sqlite:///{a.dir}/mlflow.db"
    client = mlflow.tracking.MlflowClient(uri)
    shard = rows / a.workers * cfg.visual_length * 512 * 4 / 2**30
    per_rank = 2 * (cfg.batch_size // a.workers)
    print(f"a worker's shard in the training view ({rows // a.workers} rows x {cfg.visual_length} x 512 float32): "
          f"{shard:.2f} GiB, kept on node-local disk (a worker that materialised it would hold that on top)")
    for micro in (None, a.micro_batch):
        t0 = time.time()
        s = run_train(data, cfg, os.path.join(a.dir, "runs"), run_name=f"mem-{int(time.time())}",
                      num_workers=a.workers, cpus_per_worker=1, tracking_uri=uri, max_steps_per_epoch=a.steps,
                      micro_batch=micro, log=lambda *_: None)
        took = time.time() - t0
        peak = {k: max(m.value for m in client.get_metric_history(s["mlflow_run_id"], f"worker_peak_{k}_mb")) / 1024
                for k in ("rss", "private", "shared")}
        print(f"{a.workers} workers, {per_rank} rows per rank and step in passes of {micro or per_rank}: "
              f"1 epoch of {a.steps} steps in {took:.0f} s; worker peak (max over ranks): private "
              f"{peak['private']:.2f} GiB = {peak['private'] / 2:.2f} of the 2 GiB target; RSS {peak['rss']:.2f} GiB, "
              f"of which up to {peak['shared']:.2f} GiB object-store pages (shared memory)")
    ray.shutdown()


if __name__ == "__main__":
    main()
