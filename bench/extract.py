"""Extraction throughput: the Ray Data job end to end vs the encoder alone on the
same frames (target: >= 0.95 in the steady state, start-up
reported apart) vs a plain sequential decord + open_clip loop.

    python bench/extract.py [--videos 8] [--frames 320] [--tiny] [--precision fp16]

Without --tiny it uses ViT-B-16 with random weights (same FLOPs as the pretrained model,
no download); on a GPU machine this gives the ViT-B-16 fp16 throughput.
"""
import argparse
import os
import tempfile
import time


from vadclip.config import ClipSpec
from vadclip.extract import ClipImageEncoder, ExtractOptions, run_extract
from vadclip.sample_videos import make_sample_set
from vadclip.video import iter_snippet_chunks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=320)
    ap.add_argument("--tiny", action="store_true", help="tiny random-init CLIP instead of ViT-B-16")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-encoders", type=int, default=1)
    a = ap.parse_args()
    spec = ClipSpec.tiny() if a.tiny else ClipSpec("ViT-B-16", None)
    opts = ExtractOptions(clip=spec, batch_size=a.batch_size,
                          precision=a.precision, num_encoders=a.num_encoders)
    d = tempfile.mkdtemp()
    make_sample_set(os.path.join(d, "v"), a.videos // 2, a.videos - a.videos // 2,
                    frames_range=(a.frames, a.frames), sizes=((320, 240),), seed=0)
    src = os.path.join(d, "v")

    # 1. encoder alone on pre-decoded frames
    chunks, frames = [], 0
    for p in sorted(os.listdir(src)):
        info, it = iter_snippet_chunks(os.path.join(src, p), 16, 224, 1, opts.chunk_snippets)
        chunks.extend(it)
        frames += info.num_frames
    enc = ClipImageEncoder(spec, a.precision)
    enc.encode(chunks[0])
    t = time.perf_counter()
    for c in chunks:
        enc.encode(c)
    t_enc = time.perf_counter() - t

    # 2. plain sequential loop: decode + encode, one process
    t = time.perf_counter()
    for p in sorted(os.listdir(src)):
        _, it = iter_snippet_chunks(os.path.join(src, p), 16, 224, 1, opts.chunk_snippets)
        for c in it:
            enc.encode(c)
    t_seq = time.perf_counter() - t

    # 3. the Ray Data job (Ray already started, so start-up is not counted)
    from vadclip.raysetup import ensure_ray
    ensure_ray(progress_bars=False)
    warm = os.path.join(d, "warm")
    os.makedirs(warm)
    first = sorted(os.listdir(src))[0]
    os.symlink(os.path.join(src, first), os.path.join(warm, first))
    run_extract(warm, os.path.join(d, "warm-out"), opts, log=lambda *_: None)  # worker imports, not timed
    t = time.perf_counter()
    s = run_extract(src, os.path.join(d, "out"), opts, log=lambda *_: None)
    t_job = time.perf_counter() - t
    assert s["videos_ok"] == a.videos
    f_enc, f_seq, f_job = frames / t_enc, frames / t_seq, frames / t_job
    print(f"device: {enc.device}, model: {'tiny' if a.tiny else 'ViT-B-16'} {enc.dtype}, "
          f"{a.videos} videos x {a.frames} frames ({frames // 16} encoded frames)")
    print(f"encoder only : {f_enc:9.1f} video frames/s ({f_enc / 16:.1f} images/s)")
    print(f"sequential   : {f_seq:9.1f} video frames/s")
    print(f"ray job      : {f_job:9.1f} video frames/s")
    print(f"ratio job/encoder-only = {f_job / f_enc:.2f} end to end, start-up included "
          f"(start-up {s['startup_s']:.1f} s); job/sequential = {f_job / f_seq:.2f}")
    steady = s["steady_snippets_per_s"] * 16
    print(f"ray job, steady state (each encoder from its first encode to its last): {steady:9.1f} video "
          f"frames/s; encoder busy {s['encoder_busy_fraction']:.3f} of that time")
    print(f"ratio steady job/encoder-only = {steady / f_enc:.2f} (target >= 0.95)")

if __name__ == "__main__":
    main()
