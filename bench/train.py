"""Time per training step: vectorised VadCLIP vs a per-sample-loop reference of the
same math (like the official code), on the same batch; outputs must agree within 1e-5.

    python bench/train.py [--preset ucf] [--batch 16] [--length 256] [--lengths random|full]
                          [--text vit-b-16|tiny] [--width 512] [--reps 3] [--padding masked|official]

``--padding official`` times the official-mode step against the re-implementation of
the official computation (``reference.official_forward``: the full T x T block-masked
attention over the padded sequence, per-sample adjacency loops, all 77 text positions,
CLAS2/CLASM loops); no MAC ceiling is printed for it.

The reference (``vadclip/reference.py``) runs each sample alone at its true length
(per-sample windowed-mask attention, adjacency, top-k, as the official loops) and
encodes all 77 text positions (as the official ``encode_textprompt``).  The
vectorised step runs the batch at once: packed attention windows, heads on real
snippets only, and the text encoder cut after the last EOT token (exact under
CLIP's causal mask).

Besides the measured ratio, the bench prints the multiply-accumulate count of both
paths.  On a CPU the step is compute-bound, so ``ref MACs / vectorised MACs`` is
the ceiling of the CPU speed-up for the shape; the per-sample loop's remaining cost
is Python/dispatch overhead, which dominates only for short sequences (and on GPUs,
where it is kernel-launch latency).
"""
import argparse
import time

import torch

from vadclip import VadCLIP
from vadclip.clip_backbone import FrozenCLIP
from vadclip.config import VadConfig, tiny_clip_kwargs
from vadclip.losses import vadclip_loss
from vadclip.reference import official_forward, reference_forward, reference_loss


def macs(model: VadCLIP, lengths: torch.Tensor, text_tokens: int, vectorised: bool) -> float:
    """Forward multiply-accumulates of one step (x3 for forward + backward is the same
    factor for both paths, so the ratio holds)."""
    d = model.embed_dim
    cfg = model.cfg
    t_pad = int(lengths.max())
    per_token = cfg.visual_layers * 12 * d * d + 7.5 * d * d + 8 * d * d   # transformer, GCN, mlp2
    if vectorised:
        w = cfg.attn_window
        tokens = float(sum(-(-int(n) // w) * w for n in lengths))          # packed windows
        gcn_tokens = float(len(lengths) * t_pad)                           # GCN runs padded
        pair = float(len(lengths) * t_pad * t_pad) * 3 * d
        attn = tokens * w * 2 * d * cfg.visual_layers
        adapter = tokens * cfg.visual_layers * 12 * d * d + gcn_tokens * 7.5 * d * d \
            + float(lengths.sum()) * 8 * d * d + pair + attn
    else:
        tokens = float(lengths.sum())
        pair = float((lengths.double() ** 2).sum()) * 3 * d
        attn = float((lengths.double() ** 2).sum()) * 2 * d * cfg.visual_layers
        adapter = tokens * per_token + pair + attn
    clip = model.clip.clip
    tw = clip.token_embedding.weight.shape[1]
    tl = len(clip.transformer.resblocks)
    text = cfg.num_classes * text_tokens * tl * 12 * tw * tw
    return adapter + text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ucf", choices=["ucf", "xd"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=256, help="visual_length (padded length)")
    ap.add_argument("--lengths", default="random", choices=["random", "full"],
                    help="true lengths uniform in [length/4, length] or all full (long UCF videos are "
                         "pooled to exactly visual_length)")
    ap.add_argument("--text", default="vit-b-16", choices=["vit-b-16", "tiny"],
                    help="text tower: the real ViT-B-16 shape (random init, no download) or the test-size one")
    ap.add_argument("--width", type=int, default=512, help="feature / adapter width (512 = ViT-B-16)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--padding", default="masked", choices=["masked", "official"],
                    help="masked: vs the per-sample masked reference; official: vs the official computation")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bench/gpu.py runs this on a GPU)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    kw = {} if a.text == "vit-b-16" else tiny_clip_kwargs(a.width)
    if a.text == "vit-b-16" and a.width != 512:
        kw = {"embed_dim": a.width}
    clip = FrozenCLIP("ViT-B-16", None, kw, device=str(dev))
    cfg = VadConfig.from_preset(a.preset, clip_pretrained=None, visual_length=a.length, clip_model_kwargs=kw,
                                padding=a.padding)
    reference = official_forward if a.padding == "official" else reference_forward
    torch.manual_seed(0)
    model = VadCLIP(cfg, clip).to(dev)
    x = torch.randn(a.batch, a.length, a.width)
    if a.lengths == "full":
        lengths = torch.full((a.batch,), a.length)
    else:
        lengths = torch.randint(a.length // 4, a.length + 1, (a.batch,))
    labels = torch.zeros(a.batch, cfg.num_classes)
    labels[: a.batch // 2, 0] = 1
    labels[a.batch // 2:, 3] = 1
    x, lengths, labels = x.to(dev), lengths.to(dev), labels.to(dev)

    out = model(x, lengths)
    ref = reference(model, x, lengths)
    diff = max(float((out.logits_c - ref.logits_c).abs().max().detach()),
               float((out.logits_a - ref.logits_a).abs().max().detach()),
               float((out.text_features - ref.text_features).abs().max().detach()))
    l_v = vadclip_loss(out, labels, lengths, cfg.contrast_weight)[0]
    l_r = reference_loss(ref, labels, lengths, cfg.contrast_weight)
    ldiff = abs(float((l_v - l_r).detach()))
    print(f"max |vectorised - reference|: outputs {diff:.2e}, loss {ldiff:.2e}")
    assert diff < 1e-4 and ldiff < 1e-5, "outputs differ"

    def step(fn):
        model.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = fn()
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    vec = lambda: vadclip_loss(model(x, lengths), labels, lengths, cfg.contrast_weight)[0]  # noqa: E731
    loop = lambda: reference_loss(reference(model, x, lengths), labels, lengths, cfg.contrast_weight)  # noqa: E731
    step(vec), step(loop)
    tv = min(step(vec) for _ in range(a.reps))
    tl = min(step(loop) for _ in range(a.reps))
    n_eot = int(model.prompt.eot_index.max()) + 1
    m_v = macs(model, lengths, n_eot, True)
    m_r = macs(model, lengths, model.clip.context_length, False)
    print(f"{a.preset} ({a.padding} padding) batch {a.batch} x {a.length} ({a.lengths} lengths, mean "
          f"{float(lengths.float().mean()):.0f}) x {a.width}, text tower {a.text} ({n_eot} of "
          f"{model.clip.context_length} text positions used)")
    if a.padding == "masked":
        print(f"forward MACs: vectorised {m_v / 1e9:.1f} G, reference {m_r / 1e9:.1f} G "
              f"-> compute-bound ceiling {m_r / m_v:.2f}x")
    print(f"vectorised {tv * 1000:.1f} ms/step, per-sample loop {tl * 1000:.1f} ms/step, "
          f"speed-up {tl / tv:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
