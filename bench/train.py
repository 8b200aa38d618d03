"""Time per training step: vectorised VadCLIP vs a per-sample-loop reference of the
same math (like the official code), on the same batch; outputs must agree within 1e-5.

    python bench/train.py [--batch 16] [--width 512] [--length 256] [--reps 5]
"""
import argparse
import time

import torch

from vadclip import VadCLIP, tiny_config
from vadclip.clip_backbone import FrozenCLIP
from vadclip.config import tiny_clip_kwargs
from vadclip.losses import vadclip_loss
from vadclip.reference import reference_forward, reference_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=512, help="feature / adapter width (512 = ViT-B-16)")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    kw = tiny_clip_kwargs(a.width)
    clip = FrozenCLIP("ViT-B-16", None, kw)
    cfg = tiny_config("ucf", embed_dim=a.width, visual_length=a.length, clip_model_kwargs=kw)
    torch.manual_seed(0)
    model = VadCLIP(cfg, clip)
    x = torch.randn(a.batch, a.length, a.width)
    lengths = torch.randint(a.length // 4, a.length + 1, (a.batch,))
    labels = torch.zeros(a.batch, cfg.num_classes)
    labels[: a.batch // 2, 0] = 1
    labels[a.batch // 2:, 3] = 1

    out = model(x, lengths)
    ref = reference_forward(model, x, lengths)
    diff = max(float((out.logits_c - ref.logits_c).abs().max().detach()),
               float((out.logits_a - ref.logits_a).abs().max().detach()))
    l_v = vadclip_loss(out, labels, lengths, cfg.contrast_weight)[0]
    l_r = reference_loss(ref, labels, lengths, cfg.contrast_weight)
    print(f"max |vectorised - reference| logits = {diff:.2e}; loss diff = {abs(float((l_v - l_r).detach())):.2e}")
    assert diff < 1e-4 and abs(float((l_v - l_r).detach())) < 1e-5, "outputs differ"

    def step(fn):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        loss = fn()
        loss.backward()
        return time.perf_counter() - t

    vec = lambda: vadclip_loss(model(x, lengths), labels, lengths, cfg.contrast_weight)[0]  # noqa: E731
    loop = lambda: reference_loss(reference_forward(model, x, lengths), labels, lengths, cfg.contrast_weight)  # noqa: E731
    step(vec), step(loop)
    tv = min(step(vec) for _ in range(a.reps))
    tl = min(step(loop) for _ in range(a.reps))
    print(f"batch {a.batch} x {a.length} x {a.width}: vectorised {tv * 1000:.1f} ms/step, "
          f"per-sample loop {tl * 1000:.1f} ms/step, speed-up {tl / tv:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
