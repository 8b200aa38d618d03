"""Straightforward per-sample reference of the VadCLIP math, written like the
official code (Python loops over the batch, per-sample adjacency and top-k).

It shares the weights of a :class:`~vadclip.model.VadCLIP` and runs every sample
alone at its true length, so it is the yardstick for the vectorised model: equal
outputs prove both the batching and the padding invariance.  ``bench/train.py``
times it against the vectorised implementation."""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from .model import VadCLIP, VadOutput


def _window_mask(t: int, window: int) -> torch.Tensor:
    mask = torch.full((t, t), float("-inf"))
    for i in range(0, t, window):
        mask[i:i + window, i:i + window] = 0.0
    return mask


def _adapter_one(model: VadCLIP, x: torch.Tensor) -> torch.Tensor:
    a = model.adapter
    t = x.shape[0]
    x = x + a.frame_position_embeddings.weight[:t]
    mask = _window_mask(t, a.window).to(x.device)
    h = x[None]
    for blk in a.temporal.resblocks:
        y = blk.ln_1(h)
        h = h + blk.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        h = h + blk.mlp(blk.ln_2(h))
    x = h[0]
    # similarity adjacency (official adj4 for one sample)
    sim = x @ x.T
    n = x.norm(dim=1, keepdim=True)
    sim = sim / (n @ n.T + 1e-20)
    adj = F.softmax(F.threshold(sim, a.sim_threshold, 0.0), dim=1)
    idx = torch.arange(t, dtype=torch.float32, device=x.device)
    dis = torch.exp(-(idx[:, None] - idx[None, :]).abs() / math.e)

    def gc(layer, inp, A):
        out = A @ (inp @ layer.weight)
        if layer.residual is not None:
            return out + layer.residual(inp.T[None])[0].T
        return out + inp

    x1 = a.gelu(gc(a.gc2, a.gelu(gc(a.gc1, x, adj)), adj))
    x2 = a.gelu(gc(a.gc4, a.gelu(gc(a.gc3, x, dis)), dis))
    return a.linear(torch.cat([x1, x2], dim=1))


def reference_forward(model: VadCLIP, features: torch.Tensor, lengths: torch.Tensor) -> VadOutput:
    """Per-sample forward; padded positions of the outputs are 0."""
    b, t, _ = features.shape
    # all 77 text positions, as the official encode_textprompt
    text = model.clip.encode_text_embeddings(model.prompt(), model.prompt.eot_index, truncate=False)
    logits_c = torch.zeros(b, t)
    logits_a = torch.zeros(b, t, text.shape[0])
    for i in range(b):
        n = int(lengths[i])
        v = _adapter_one(model, features[i, :n].float())
        l1 = model.classifier(v + model.mlp2(v))[:, 0]
        vis = l1[None] @ v
        vis = vis / vis.norm(dim=-1, keepdim=True)
        tf = text + vis
        tf = tf + model.mlp1(tf)
        l2 = (v / v.norm(dim=-1, keepdim=True)) @ (tf / tf.norm(dim=-1, keepdim=True)).T / model.cfg.temperature
        logits_c[i, :n] = l1
        logits_a[i, :n] = l2
    return VadOutput(logits_c, logits_a, text)


def reference_loss(out: VadOutput, labels: torch.Tensor, lengths: torch.Tensor, contrast_weight: float):
    """The official CLAS2 + CLASM + text contrast loss, with loops."""
    b = labels.shape[0]
    inst_c = []
    inst_a = []
    probs = torch.sigmoid(out.logits_c)
    for i in range(b):
        n = int(lengths[i])
        k = n // 16 + 1
        inst_c.append(torch.topk(probs[i, :n], k).values.mean().view(1))
        inst_a.append(torch.topk(out.logits_a[i, :n], k, dim=0).values.mean(0, keepdim=True))
    l1 = F.binary_cross_entropy(torch.cat(inst_c), 1 - labels[:, 0])
    target = labels / labels.sum(1, keepdim=True)
    l2 = -torch.mean(torch.sum(target * F.log_softmax(torch.cat(inst_a), dim=1), dim=1))
    t = out.text_features
    l3 = torch.zeros(())
    t0 = t[0] / t[0].norm()
    for j in range(1, t.shape[0]):
        l3 = l3 + torch.abs(t0 @ (t[j] / t[j].norm()))
    l3 = l3 / (t.shape[0] - 1)
    return l1 + l2 + contrast_weight * l3

