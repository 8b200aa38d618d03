"""Extraction throughput on the CPU, per encoder precision, side by side in one run:

* the machine's matmul peak in fp32 and bf16 (torch.mm, the encoder's threads);
* decode-only: the job's decode stage alone (Ray Data, the same tasks and parallelism);
* encoder-only: the job's encoder (ClipImageEncoder, the threads an encoder actor
  gets) on pre-decoded crops, and the fraction of the matmul peak it reaches
  (FLOPs of one image counted by torch's FlopCounterMode);
* the job: `run_extract` end to end and in its steady state (each encoder from its
  first encode to its last), its encoder's busy fraction, and its ratio to two bounds:
  the slower of encoder-only and decode-only (stages on cores of their own), and
  1 / (1/encoder-only + 1/decode-only), both stages on the same cores, which is what a
  CPU-only node has: each measured alone had every core.

    python bench/extract.py                                  # 4 videos x 480 frames, 1280x720, fp32 vs auto
    python bench/extract.py --size 320x240 --precisions fp32,bf16,auto
    python bench/extract.py --tiny --videos 2 --frames 64    # smoke run

ViT-B-16 with random weights (the same FLOPs as the pretrained model, no download).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vadclip.model.config import ClipSpec  # noqa: E402
from vadclip.clip.encoder import ClipImageEncoder  # noqa: E402
from vadclip.jobs.extract import DecodeStage, ExtractOptions, run_extract  # noqa: E402
from vadclip.jobs.stages import run_stages  # noqa: E402
from vadclip.jobs.manifest import load_manifest  # noqa: E402
from vadclip.video.samples import make_sample_set  # noqa: E402
from vadclip.video.decode import iter_snippet_chunks  # noqa: E402


def matmul_peak(dtype, threads: int) -> float:
    """GFLOP/s of a ViT-sized matmul (best of 5) at ``threads``."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 768).to(dtype), torch.randn(768, 3072).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 * 768 * 3072 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def image_flops(enc: ClipImageEncoder) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # with autograd on, nn.MultiheadAttention leaves its fused inference path, whose
    # projections and attention the counter would not see
    x = torch.zeros(1, 3, enc.image_size, enc.image_size, dtype=enc.dtype, requires_grad=True)
    with FlopCounterMode(display=False) as fc, torch.enable_grad():
        enc.clip.clip.visual(x)
    return float(fc.get_total_flops())


def decode_only(items, opts: ExtractOptions, size: int) -> float:
    """Snippets/s of the job's decode stage alone (Ray Data, its tasks and parallelism)."""
    import ray

    ds = run_stages(ray.data.from_items(items, override_num_blocks=len(items)), [DecodeStage(opts, size)])
    t, n = time.perf_counter(), 0
    for row in ds.iter_rows():
        n += len(row["frames"])
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--size", default="1280x720", help="video width x height")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--tiny", action="store_true", help="tiny random-init CLIP instead of ViT-B-16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-encoders", type=int, default=1)
    a = ap.parse_args()
    import torch

    spec = ClipSpec.tiny() if a.tiny else ClipSpec("ViT-B-16", None)
    w, h = (int(v) for v in a.size.split("x"))
    d = tempfile.mkdtemp()
    src = os.path.join(d, "v")
    make_sample_set(src, a.videos // 2, a.videos - a.videos // 2, frames_range=(a.frames, a.frames),
                    sizes=((w, h),), seed=0)
    threads = max(1, (os.cpu_count() or 1) // a.num_encoders)      # what an encoder actor gets
    print(f"machine: {os.cpu_count()} cores; {a.videos} videos x {a.frames} frames at {w}x{h} "
          f"({a.videos * -(-a.frames // 16)} snippets); {'tiny CLIP' if a.tiny else 'ViT-B-16'}; "
          f"encoder threads {threads}")
    peaks = {"fp32": matmul_peak(torch.float32, threads), "bf16": matmul_peak(torch.bfloat16, threads)}
    print(f"matmul peak ({threads} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")

    from vadclip.jobs.cluster import ensure_ray
    ensure_ray(progress_bars=False)
    base = ExtractOptions(clip=spec, batch_size=a.batch_size, num_encoders=a.num_encoders)
    size = spec.image_size
    items = load_manifest(src)
    decode_only(items[:1], base, size)                     # worker start-up, not timed
    dec = decode_only(items, base, size)
    print(f"decode-only (the job's decode stage alone): {dec:.1f} snippets/s")

    chunks = [c for p in sorted(os.listdir(src))
              for c in iter_snippet_chunks(os.path.join(src, p), 16, size, 1, base.chunk_snippets)[1]]
    rows = []
    for prec in a.precisions.split(","):
        torch.set_num_threads(threads)
        enc = ClipImageEncoder(spec, prec, device="cpu")
        enc.encode(chunks[0])
        t = min(_timed(lambda: [enc.encode(c) for c in chunks]) for _ in range(2))
        n = sum(len(c) for c in chunks)
        enc_rate = n / t
        frac = enc_rate * image_flops(enc) / 1e9 / peaks["bf16" if enc.precision == "bf16" else "fp32"]
        opts = ExtractOptions(clip=spec, batch_size=a.batch_size, num_encoders=a.num_encoders, precision=prec)
        run_extract(os.path.join(src, sorted(os.listdir(src))[0]), os.path.join(d, f"warm-{prec}"), opts,
                    log=lambda *_: None)                   # worker imports and model build, not timed
        t = time.perf_counter()
        s = run_extract(src, os.path.join(d, f"out-{prec}"), opts, log=lambda *_: None)
        t_job = time.perf_counter() - t
        assert s["videos_ok"] == a.videos, s
        rows.append((prec, enc.precision, enc_rate, frac, s["snippets"] / t_job, s["steady_snippets_per_s"],
                     s["encoder_busy_fraction"], s["precisions"], enc.precision_why))

    print(f"{'asked':>6} {'encoder':>8} {'enc-only':>9} {'of peak':>8} {'job e2e':>8} {'steady':>8} {'busy':>6} "
          f"{'slower':>8} {'steady/slower':>13} {'shared':>7} {'steady/shared':>13}   (snippets/s)")
    for prec, used, enc_rate, frac, e2e, steady, busy, job_prec, why in rows:
        slower, shared = min(enc_rate, dec), 1.0 / (1.0 / enc_rate + 1.0 / dec)
        print(f"{prec:>6} {used:>8} {enc_rate:9.2f} {frac:8.2f} {e2e:8.2f} {steady:8.2f} {busy:6.3f} "
              f"{'decode' if dec < enc_rate else 'encoder':>8} {steady / slower:13.2f} {shared:7.2f} "
              f"{steady / shared:13.2f}   job encoded in {job_prec}; {why}")
    if len(rows) > 1:
        r0 = rows[0]
        for r in rows[1:]:
            print(f"steady job {r[0]} / {r0[0]} = {r[5] / r0[5]:.2f}; encoder-only {r[2] / r0[2]:.2f}")


if __name__ == "__main__":
    main()
