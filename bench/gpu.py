"""The GPU figures of issue #14, on one GPU, in one run:

1. encoder only: ViT-B-16 image encoder, bf16 (or --precision), channels-last, SDPA,
   on pre-made uint8 crops → images/s (target ≥ 10,000 on an H100/H200);
2. end to end: the extraction job (Ray Data: CPU decode tasks → one GPU encoder actor)
   on generated videos → snippets/s, and its ratio to (1) (target ≥ 0.9);
3. decode + resize + crop (a decode task's work): frames of video per second, per CPU
   core for decord and torchcodec on the CPU, and for torchcodec's NVDEC decoder with
   the resize on the GPU (``--decode-device cuda`` in the job);
5. hours of video per GPU-hour at 1 crop (the job's steady rate) and 10 crops (ten
   images a snippet: encoder-only / 10, or decoding where slower);
4. training: steps/s of this project's step vs the official computation at the
   official batch sizes (UCF 64+64, XD 96), through bench/train.py --device cuda
   (target ≥ 5x).

    python bench/gpu.py                       # on a GPU machine
    python bench/gpu.py --decode-device cuda  # ... the job decoding on the GPU too
    python bench/gpu.py --device cpu --tiny --videos 4 --images 256 --skip-train   # smoke run on a CPU

Random-init weights (no download): the same FLOPs as the pretrained model.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def encoder_only(device: str, precision: str, spec, batch: int, images: int) -> float:
    import torch

    from vadclip.clip.encoder import ClipImageEncoder

    enc = ClipImageEncoder(spec, precision, device=device)
    size = enc.image_size
    x = np.random.default_rng(0).integers(0, 255, (batch, 1, 3, size, size), dtype=np.uint8)
    enc.encode(x)                                            # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n, t = 0, time.perf_counter()
    while n < images:
        enc.encode(x)
        n += batch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def decode_fps(paths, decoder: str = "auto", device: str = "cpu"):
    """(frames of video per second, what decoded them) through the job's decode path."""
    from vadclip.video.decode import iter_snippet_chunks

    frames, t, used = 0, time.perf_counter(), set()
    for p in paths:
        info, it = iter_snippet_chunks(p, 16, 224, 1, 64, decoder=decoder, device=device)
        for _ in it:
            pass
        frames += info.num_frames
        used.add(info.decoder)
    return frames / (time.perf_counter() - t), ",".join(sorted(used))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch-size", type=int, default=512, help="images per encoder forward")
    ap.add_argument("--images", type=int, default=20000, help="images for the encoder-only figure")
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--frames", type=int, default=1600, help="frames per generated video (100 snippets)")
    ap.add_argument("--tiny", action="store_true", help="tiny CLIP (smoke runs)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--decode-device", default="cpu", choices=["cpu", "cuda"],
                    help="where the extraction job decodes (cuda: torchcodec's NVDEC decoder)")
    a = ap.parse_args()
    from vadclip.model.config import ClipSpec
    from vadclip.jobs.extract import ExtractOptions, run_extract
    from vadclip.jobs.cluster import ensure_ray
    from vadclip.video.samples import make_sample_set

    spec = ClipSpec.tiny() if a.tiny else ClipSpec("ViT-B-16", None)
    ips = encoder_only(a.device, a.precision, spec, a.batch_size, a.images)
    print(f"1. encoder only ({'tiny' if a.tiny else 'ViT-B-16'} {a.precision}, batch {a.batch_size}): "
          f"{ips:,.0f} images/s (target >= 10,000 bf16 on an H100/H200)")

    d = tempfile.mkdtemp()
    man, _ = make_sample_set(os.path.join(d, "v"), a.videos // 2, a.videos - a.videos // 2,
                             frames_range=(a.frames, a.frames), sizes=((320, 240),), seed=0)
    import torch

    torch.set_num_threads(1)
    few = [m["path"] for m in man[: max(1, len(man) // 8)]]
    decode_sps = {}
    for dec, dev in (("decord", "cpu"), ("torchcodec", "cpu"), ("torchcodec", "cuda")):
        if dev == "cuda" and not a.device.startswith("cuda"):
            continue
        fps, used = decode_fps(few, dec, dev)
        decode_sps[dev] = fps / 16 * (1 if dev == "cuda" else (os.cpu_count() or 1))
        print(f"3. decode + resize + crop ({used}{', one core' if dev == 'cpu' else ''}, 320x240): {fps:,.0f} frames of video/s "
              f"= {fps / 16:,.0f} snippets/s")
    torch.set_num_threads(os.cpu_count() or 1)
    gpus = 1.0 if a.device.startswith("cuda") else 0.0
    opts = ExtractOptions(clip=spec, batch_size=a.batch_size, precision=a.precision if gpus else "fp32",
                          gpus_per_encoder=gpus / 2 if a.decode_device == "cuda" else gpus,
                          decode_device=a.decode_device)
    ensure_ray(progress_bars=False)
    run_extract([m["path"] for m in man][0], os.path.join(d, "warm"), opts, log=lambda *_: None)
    t = time.perf_counter()
    s = run_extract(os.path.join(d, "v"), os.path.join(d, "out"), opts, log=lambda *_: None)
    sps = s["snippets"] / (time.perf_counter() - t)
    print(f"2. end to end (Ray Data job, {os.cpu_count()} CPUs, decoding with {', '.join(s['decoders'])}, "
          f"1 encoder): {sps:,.0f} snippets/s = {sps / ips:.2f} of encoder-only (target >= 0.9); steady "
          f"{s.get('steady_snippets_per_s', 0):,.0f} snippets/s = {s.get('steady_snippets_per_s', 0) / ips:.2f}, "
          f"encoder busy {s.get('encoder_busy_fraction', 0):.0%}")
    bound = min(ips, decode_sps.get(a.decode_device, float("inf")))
    steady = s.get("steady_snippets_per_s", 0)
    print(f"   vs the slower of encoder-only and decode-only ({bound:,.0f} snippets/s; decode-only on the CPU "
          f"= one core's rate x {os.cpu_count()} cores): {steady / bound:.2f} (target >= 0.9)")
    from vadclip.io.features import read_feature_rows

    rows = read_feature_rows(os.path.join(d, "out", "features"), ["video_id", "fps", "num_frames"])
    video_s = sum(r["num_frames"] / (r["fps"] or 25.0) for r in rows)
    per_snippet = video_s / max(1, s["snippets"])        # seconds of video per snippet
    gpu_share = max(gpus, 1e-9) if gpus else 1.0
    print(f"5. hours of video per {'GPU' if gpus else 'machine'}-hour: 1 crop {steady * per_snippet / gpu_share:,.0f} "
          f"(the steady job); 10 crops {min(ips / 10, bound) * per_snippet / gpu_share:,.0f} (ten images a snippet: "
          f"encoder-only / 10, or decoding if slower)")
    if a.skip_train:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for preset, batch in (("ucf", 128), ("xd", 96)):
        r = subprocess.run([sys.executable, os.path.join(here, "train.py"), "--preset", preset, "--batch", str(batch),
                            "--padding", "official", "--device", a.device, "--reps", "5"],
                           capture_output=True, text=True)
        print(f"4. training {preset} batch {batch}: " + (r.stdout.strip().splitlines()[-1] if r.returncode == 0
                                                          else "FAILED " + r.stderr[-500:]))


if __name__ == "__main__":
    main()
