"""Time per training step: vectorised VadCLIP vs a per-sample-loop reference of the
same math (like the official code), on the same batch; outputs must agree within 1e-5.

    python bench/train.py --table [--reps 2] [--device cpu]

``--table``: this project's step in both padding modes against the official training
procedure (``reference.official_forward``: padded T=256 batch, block-diagonal mask
over the full sequence, all 77 text positions, per-sample adjacency loops; plus the
CLAS2/CLASM top-k loops of ``reference_loss``) at the official batch sizes (UCF 64+64,
XD 96) and at 16, measured alternately in one run, each with its MAC ceiling
(official MACs / this project's MACs; target on CPU: within 15% of it).

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
from vadclip.clip.backbone import FrozenCLIP
from vadclip.model.config import ClipSpec, VadConfig
from vadclip.model.losses import vadclip_loss
from vadclip.testing.reference import official_forward, reference_forward, reference_loss


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


def official_macs(model: VadCLIP, batch: int, text_tokens: int, windows: bool) -> float:
    """Forward MACs of a step on a padded [batch, visual_length] input with padded
    positions taking part (the official computation, and this project's official
    padding mode): ``windows`` — attention within the windows only (this project),
    else the full T x T block-masked attention (official); ``text_tokens`` of 77."""
    d, cfg = model.embed_dim, model.cfg
    t, tokens = cfg.visual_length, float(batch * cfg.visual_length)
    attn_pairs = tokens * (cfg.attn_window if windows else t)
    adapter = tokens * (cfg.visual_layers * 12 * d * d + 7.5 * d * d + 8 * d * d) \
        + attn_pairs * 2 * d * cfg.visual_layers + float(batch * t * t) * 3 * d
    clip = model.clip.clip
    tw = clip.token_embedding.weight.shape[1]
    return adapter + cfg.num_classes * text_tokens * len(clip.transformer.resblocks) * 12 * tw * tw


def shape_table(a) -> None:
    """This project's step in both padding modes against the official training
    procedure (official_forward + the CLAS2/CLASM loops of reference_loss) at the
    official batch sizes and at 16, measured alternately in one run."""
    dev = torch.device(a.device)
    spec = ClipSpec("ViT-B-16", None)             # the real text tower's shape, random init
    clip = FrozenCLIP(spec, device=str(dev))
    shapes = [("ucf", 128, "64 + 64"), ("ucf", 16, "8 + 8"), ("xd", 96, "96"), ("xd", 16, "16")]
    print(f"forward+backward per step, {a.device}, {torch.get_num_threads()} threads, visual_length 256, "
          f"width 512, ViT-B-16 text tower; best of {a.reps} alternating repetitions")
    print(f"{'shape':<22}{'official':>11}{'padding':>9}{'project':>10}{'speed-up':>10}{'ceiling':>9}"
          f"{'of ceiling':>12}")
    worst = float("inf")
    for preset, batch, split in shapes:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(batch)
        lengths = torch.randint(64, 257, (batch,), generator=g)
        x = torch.randn(batch, 256, 512, generator=g)
        labels = torch.zeros(batch, 14 if preset == "ucf" else 7)
        labels[: batch // 2, 0] = 1
        labels[batch // 2:, 3] = 1
        x, lengths, labels = x.to(dev), lengths.to(dev), labels.to(dev)
        models = {}
        for padding in ("official", "masked"):
            cfg = VadConfig.from_preset(preset, clip=spec, padding=padding)
            torch.manual_seed(0)
            models[padding] = VadCLIP(cfg, clip).to(dev)
        ref_model = models["official"]
        # the official computation and this project's official mode agree
        with torch.no_grad():
            out, ref = ref_model(x, lengths), official_forward(ref_model, x, lengths)
        diff = max(float((out.logits_c - ref.logits_c).abs().max()), float((out.logits_a - ref.logits_a).abs().max()))
        assert diff < 1e-3, f"{preset} {batch}: official mode differs from the official computation by {diff}"

        def timed(fn, model):
            model.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        cw = ref_model.cfg.contrast_weight
        fns = {"official": (lambda: reference_loss(official_forward(ref_model, x, lengths), labels, lengths, cw),
                            ref_model)}
        for padding, m in models.items():
            fns[padding + "-project"] = (lambda m=m: vadclip_loss(m(x, lengths), labels, lengths, cw)[0], m)
        best = {k: float("inf") for k in fns}
        for r in range(a.reps + 1):               # the first round warms up
            for k, (fn, m) in fns.items():
                t = timed(fn, m)
                if r:
                    best[k] = min(best[k], t)
        n_eot = int(ref_model.prompt.eot_index.max()) + 1
        m_off = official_macs(ref_model, batch, ref_model.clip.context_length, windows=False)
        ceilings = {"official": m_off / official_macs(ref_model, batch, n_eot, windows=True),
                    "masked": m_off / macs(models["masked"], lengths, n_eot, True)}
        for padding in ("official", "masked"):
            sp = best["official"] / best[padding + "-project"]
            frac = sp / ceilings[padding]
            worst = min(worst, frac)
            print(f"{preset + ' ' + str(batch) + ' (' + split + ')':<22}{best['official'] * 1000:>9.0f}ms"
                  f"{padding:>9}{best[padding + '-project'] * 1000:>8.0f}ms{sp:>9.2f}x{ceilings[padding]:>8.2f}x"
                  f"{frac:>11.2f}")
    print(f"lowest fraction of the MAC ceiling: {worst:.2f} (target >= 0.85; above 1: the official loops cost "
          f"more than their multiply-accumulates)")


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
    ap.add_argument("--table", action="store_true",
                    help="both padding modes vs the official procedure at the official batch sizes "
                         "(UCF 64+64, XD 96) and at 16, with the MAC ceiling of each")
    a = ap.parse_args()
    if a.table:
        return shape_table(a)
    dev = torch.device(a.device)
    if a.text == "vit-b-16":
        spec = ClipSpec("ViT-B-16", None, {} if a.width == 512 else {"embed_dim": a.width})
    else:
        spec = ClipSpec.tiny(a.width)
    clip = FrozenCLIP(spec, device=str(dev))
    cfg = VadConfig.from_preset(a.preset, clip=spec, visual_length=a.length, padding=a.padding)
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
