"""Straightforward per-sample reference of the VadCLIP math, written like the
official code (Python loops over the batch, per-sample adjacency and top-k).

It shares the weights of a :class:`~vadclip.model.network.VadCLIP` and runs every sample
alone at its true length, so it is the yardstick for the vectorised model: equal
outputs prove both the batching and the padding invariance.  ``bench/train.py``
times it against the vectorised implementation."""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from vadclip.model.network import VadCLIP, VadOutput


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



# ----------------------------------------------------------------------------------
# The official VadCLIP computation (nwpu-zxr/VadCLIP, src/model.py, src/utils/layers.py,
# src/utils/tools.py, src/*_test.py), re-implemented from reading it: the yardstick of
# ``padding="official"``.  Sequences are always padded to visual_length and padded
# positions are not masked, except in the similarity adjacency.
def _official_window_mask(length: int, window: int) -> torch.Tensor:
    """Additive block-diagonal mask as the official ``build_attention_mask``."""
    mask = torch.full((length, length), float("-inf"))
    for i in range(length // window):
        hi = (i + 1) * window if (i + 1) * window < length else length
        mask[i * window:hi, i * window:hi] = 0.0
    return mask


def _official_text(model: VadCLIP) -> torch.Tensor:
    if model.clip is None:
        return model.text_features()
    # all 77 positions, as the official encode_textprompt
    return model.clip.encode_text_embeddings(model.prompt(), model.prompt.eot_index, truncate=False)


def official_forward(model: VadCLIP, features: torch.Tensor, lengths) -> VadOutput:
    """Official ``CLIPVAD.forward`` on a padded batch [B, visual_length, D]; ``lengths``
    only cut the similarity adjacency (``adj4``)."""
    a = model.adapter
    b, length, _ = features.shape
    assert length == model.cfg.visual_length, "the official forward always sees visual_length positions"
    x = features.float() + a.frame_position_embeddings.weight[None, :length]
    mask = _official_window_mask(length, a.window).to(x.device)
    for blk in a.temporal.resblocks:
        y = blk.ln_1(x)
        x = x + blk.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        x = x + blk.mlp(blk.ln_2(x))
    # adj4
    sim = x @ x.transpose(1, 2)
    nrm = x.norm(p=2, dim=2, keepdim=True)
    sim = sim / (nrm @ nrm.transpose(1, 2) + 1e-20)
    adj = torch.zeros_like(sim)
    for i in range(b):
        n = int(lengths[i])
        adj[i, :n, :n] = F.softmax(F.threshold(sim[i, :n, :n], a.sim_threshold, 0.0), dim=1)
    # DistanceAdj over every position: exp(-|i - j| / e)
    idx = torch.arange(length, dtype=torch.float32, device=x.device)
    dis = torch.exp(-(idx[:, None] - idx[None, :]).abs() / math.exp(1.0))[None].repeat(b, 1, 1)

    def gc(layer, inp, adjacency):
        out = adjacency @ (inp @ layer.weight)
        if layer.residual is not None:   # Conv1d(k=5, padding=2) over the whole padded sequence
            return out + layer.residual(inp.permute(0, 2, 1)).permute(0, 2, 1)
        return out + inp

    x1 = a.gelu(gc(a.gc2, a.gelu(gc(a.gc1, x, adj)), adj))
    x2 = a.gelu(gc(a.gc4, a.gelu(gc(a.gc3, x, dis)), dis))
    v = a.linear(torch.cat((x1, x2), 2))
    logits1 = model.classifier(v + model.mlp2(v))                         # [B, L, 1]
    text = _official_text(model)
    visual_attn = logits1.permute(0, 2, 1) @ v
    visual_attn = visual_attn / visual_attn.norm(dim=-1, keepdim=True)
    visual_attn = visual_attn.expand(b, text.shape[0], visual_attn.shape[2])
    tf = text[None].expand(b, -1, -1) + visual_attn
    tf = tf + model.mlp1(tf)
    vn = v / v.norm(dim=-1, keepdim=True)
    tn = (tf / tf.norm(dim=-1, keepdim=True)).permute(0, 2, 1)
    logits2 = vn @ tn / model.cfg.temperature
    return VadOutput(logits1[..., 0], logits2, text)


def official_test_scores(model: VadCLIP, feat):
    """One video through the official test: ``process_split`` into visual_length chunks
    (zero-padded last chunk), the chunk lengths as the official test loop computes
    them, one batch through the forward, the first T positions kept.
    Returns (C-branch sigmoid [T], A-branch softmax [T, C]) as numpy arrays."""
    import numpy as np

    feat = np.asarray(feat, np.float32)
    t, maxlen = feat.shape[0], model.cfg.visual_length

    def pad(f):
        return np.pad(f, ((0, maxlen - f.shape[0]), (0, 0))) if f.shape[0] <= maxlen else f

    if t < maxlen:
        visual = pad(feat)[None]
    else:
        split_num = int(t / maxlen) + 1
        visual = np.stack([feat[i * maxlen:(i + 1) * maxlen] if i < split_num - 1
                           else pad(feat[i * maxlen:(i + 1) * maxlen]) for i in range(split_num)])
    lengths, length = [], t
    for j in range(int(t / maxlen) + 1):
        if j == 0 and length < maxlen:
            lengths.append(length)
        elif j == 0 and length > maxlen:
            lengths.append(maxlen)
            length -= maxlen
        elif length > maxlen:
            lengths.append(maxlen)
            length -= maxlen
        else:
            lengths.append(length)
    with torch.no_grad():
        out = official_forward(model.eval(), torch.from_numpy(visual), lengths)
    l1 = out.logits_c.reshape(-1)[:t]
    l2 = out.logits_a.reshape(-1, out.logits_a.shape[-1])[:t]
    return torch.sigmoid(l1).numpy(), l2.softmax(dim=-1).numpy()
