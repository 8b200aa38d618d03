"""VadCLIP: LGT-Adapter + C-branch + A-branch over frozen CLIP features.

Everything here is vectorised over the batch with a length mask: a batch of
padded sequences gives, for every real snippet, exactly the scores that the
sequence alone (unpadded) would give.  Module and parameter names follow the
official implementation so its checkpoints map onto this model by prefix.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vadclip.clip.backbone import FrozenCLIP
from vadclip.model.config import VadConfig


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (as CLIP's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("c_fc", nn.Linear(width, width * 4)),
        ("gelu", QuickGELU()),
        ("c_proj", nn.Linear(width * 4, width)),
    ]))


def window_attention(mha: nn.MultiheadAttention, x: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
    """Self-attention inside packed windows with the weights of ``mha``.

    x: [N, w, D] windows, key_ok: [N, w] bool (True = real snippet).  Every window
    holds at least one real snippet, so no query row is fully masked."""
    n, w, d = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, w, h, d // h).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_ok[:, None, None, :])
    return mha.out_proj(o.transpose(1, 2).reshape(n, w, d))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = LayerNorm(width)
        self.mlp = _mlp(width)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
        x = x + window_attention(self.attn, self.ln_1(x), key_ok)
        return x + self.mlp(self.ln_2(x))


class TemporalTransformer(nn.Module):
    """Transformer whose attention is block-diagonal in windows of ``window``
    snippets.  Windows never exchange information, so the whole stack runs on
    packed windows [N, w, D]: no T x T masks and no work on all-padding windows."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, windows: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            windows = blk(windows, key_ok)
        return windows


class GraphConvolution(nn.Module):
    """x' = A (x W) + residual(x); residual is a width-5 Conv1d when widths differ."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        nn.init.xavier_uniform_(self.weight)
        self.residual = (nn.Conv1d(in_features, out_features, kernel_size=5, padding=2)
                         if in_features != out_features else None)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        out = adj @ (x @ self.weight)
        if self.residual is not None:
            return out + self.residual(x.transpose(1, 2)).transpose(1, 2)
        return out + x


def length_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B] lengths → [B, T] bool, True on real snippets."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


class LGTAdapter(nn.Module):
    """Local (windowed transformer) + global (GCN) temporal adapter."""

    def __init__(self, width: int, visual_length: int, layers: int, heads: int, window: int,
                 sim_threshold: float = 0.7) -> None:
        super().__init__()
        if width % 2:
            raise ValueError(f"adapter width must be even, got {width}")
        self.visual_length, self.window, self.sim_threshold = visual_length, window, sim_threshold
        self.frame_position_embeddings = nn.Embedding(visual_length, width)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.01)
        self.temporal = TemporalTransformer(width, layers, heads)
        half = width // 2
        self.gc1 = GraphConvolution(width, half)
        self.gc2 = GraphConvolution(half, half)
        self.gc3 = GraphConvolution(width, half)
        self.gc4 = GraphConvolution(half, half)
        self.linear = nn.Linear(width, width)
        self.gelu = QuickGELU()

    def similarity_adj(self, x: torch.Tensor, pair_ok: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        xn = x.norm(dim=-1, keepdim=True)
        cos = (x @ x.transpose(1, 2)) / (xn @ xn.transpose(1, 2) + 1e-20)
        cos = F.threshold(cos, self.sim_threshold, 0.0)
        adj = cos.masked_fill(~pair_ok, float("-inf")).softmax(dim=-1)
        return adj * valid[:, :, None]

    @staticmethod
    def distance_adj(t: int, pair_real: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(t, device=pair_real.device, dtype=torch.float32)
        dist = torch.exp(-(idx[:, None] - idx[None, :]).abs() / math.e)
        return dist[None] * pair_real

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, official: bool = False) -> torch.Tensor:
        """x [B, T, D] with true ``lengths`` [B] → [B, T, D].

        masked (default): padded positions take no part anywhere and come out 0, so a
        real snippet's output does not depend on the padding after it.
        ``official``: as the official code on its padded input — every window of the
        transformer attends over padded positions too, the distance adjacency and the
        GCN residual convolution span all T positions; only the similarity adjacency is
        cut to the true length."""
        b, t, d = x.shape
        if t > self.visual_length:
            raise ValueError(f"sequence of {t} snippets exceeds visual_length {self.visual_length}; "
                             "split it into chunks first")
        valid = length_mask(lengths, t)                       # [B, T]
        vm = valid[:, :, None].to(x.dtype)
        keep = (lambda h: h) if official else (lambda h: h * vm)
        pos = torch.arange(t, device=x.device)

        # local: windowed transformer (masked: only windows that hold real snippets)
        w = self.window
        nw = -(-t // w)
        x = x + self.frame_position_embeddings(pos)[None]
        xw = F.pad(x, (0, 0, 0, nw * w - t)).view(b, nw, w, d)
        if official:
            okw = F.pad(torch.ones_like(valid), (0, nw * w - t)).view(b, nw, w)
        else:
            okw = F.pad(valid, (0, nw * w - t)).view(b, nw, w)
        live = okw[:, :, 0]                                   # window starts on a position that counts
        bi, wi = live.nonzero(as_tuple=True)
        y = self.temporal(xw[bi, wi], okw[bi, wi])
        x = keep(x.new_zeros(b, nw, w, d).index_put((bi, wi), y).view(b, nw * w, d)[:, :t])

        # global: GCN over the similarity adjacency of real snippets and the distance
        # adjacency (of real snippets; official: of all positions)
        pair_real = valid[:, :, None] & valid[:, None, :]
        eye = torch.eye(t, dtype=torch.bool, device=x.device)[None]
        adj = self.similarity_adj(x, pair_real | eye, valid)
        dis = self.distance_adj(t, torch.ones_like(pair_real[:1], dtype=x.dtype) if official
                                else pair_real.to(x.dtype))
        x1 = keep(self.gelu(self.gc1(x, adj)))
        x2 = keep(self.gelu(self.gc3(x, dis)))
        x1 = self.gelu(self.gc2(x1, adj))
        x2 = self.gelu(self.gc4(x2, dis))
        return keep(self.linear(torch.cat((x1, x2), dim=2)))


class PromptLearner(nn.Module):
    """Class names wrapped in learnable context: [SOT] ctx×prefix name ctx×postfix [EOT].

    Context vectors come from one learnable table indexed by token position (as in
    the official code); the class-name token embeddings are frozen buffers."""

    def __init__(self, clip: FrozenCLIP, prompts, prefix: int, postfix: int) -> None:
        super().__init__()
        L, W = clip.context_length, clip.text_width
        self.text_prompt_embeddings = nn.Embedding(L, W)
        nn.init.normal_(self.text_prompt_embeddings.weight, std=0.01)
        tokens = clip.tokenize(prompts)
        word = clip.token_embedding(tokens).float()           # [C, L, W]
        C = tokens.shape[0]
        eot = tokens.argmax(dim=-1)
        src = torch.full((C, L), -1, dtype=torch.long)        # source token index or -1 (= context)
        eot_new = torch.empty(C, dtype=torch.long)
        for i, name in enumerate(prompts):                   # once, at construction
            e = int(eot[i])
            end = prefix + e + postfix
            if end >= L:
                raise ValueError(f"class prompt {name!r} is too long for {prefix}+{postfix} context "
                                 f"tokens in a {L}-token text encoder")
            src[i, 0] = 0
            src[i, prefix + 1:prefix + e] = torch.arange(1, e)
            src[i, end] = e
            eot_new[i] = end
        is_word = src >= 0
        gathered = torch.gather(word, 1, src.clamp(min=0)[:, :, None].expand(-1, -1, W))
        self.register_buffer("word_embeddings", gathered * is_word[:, :, None], persistent=False)
        self.register_buffer("is_word", is_word, persistent=False)
        self.register_buffer("eot_index", eot_new, persistent=False)

    def forward(self) -> torch.Tensor:
        ctx = self.text_prompt_embeddings.weight[None]
        return torch.where(self.is_word[:, :, None], self.word_embeddings.to(ctx.dtype), ctx)


@dataclass
class VadOutput:
    logits_c: torch.Tensor        # [B, T] C-branch anomaly logits
    logits_a: torch.Tensor        # [B, T, C] A-branch alignment logits (/ temperature)
    text_features: torch.Tensor   # [C, D] prompt text features before the visual prompt


class VadCLIP(nn.Module):
    """The VadCLIP head over per-snippet CLIP features [B, T, D].

    ``clip`` (a :class:`FrozenCLIP`) is needed to train the learnable prompts; it is
    held outside the state dict (its weights are frozen and rebuilt from the config).
    A model exported with :meth:`freeze_text` scores without any CLIP weights."""

    def __init__(self, cfg: VadConfig, clip: Optional[FrozenCLIP] = None, embed_dim: Optional[int] = None) -> None:
        super().__init__()
        self.cfg = cfg
        if clip is None and embed_dim is None:
            raise ValueError("VadCLIP needs a FrozenCLIP or an explicit embed_dim")
        d = int(clip.embed_dim if clip is not None else embed_dim)
        self.embed_dim = d
        self.adapter = LGTAdapter(d, cfg.visual_length, cfg.visual_layers, cfg.visual_heads,
                                  cfg.attn_window, cfg.sim_threshold)
        self.mlp1 = _mlp(d)
        self.mlp2 = _mlp(d)
        self.classifier = nn.Linear(d, 1)
        object.__setattr__(self, "_clip", clip)   # not a submodule: frozen, not checkpointed
        self.prompt = (PromptLearner(clip, cfg.class_prompts, cfg.prompt_prefix, cfg.prompt_postfix)
                       if clip is not None else None)
        self.register_buffer("frozen_text_features", torch.zeros(cfg.num_classes, d))
        self.register_buffer("has_frozen_text", torch.zeros((), dtype=torch.bool))

    @property
    def clip(self) -> Optional[FrozenCLIP]:
        return self._clip

    def _apply(self, fn, *args, **kwargs):  # keep the frozen CLIP on the same device/dtype
        super()._apply(fn, *args, **kwargs)
        if self._clip is not None:
            self._clip._apply(fn, *args, **kwargs)
        return self

    # ----------------------------------------------------------------- text
    def text_features(self) -> torch.Tensor:
        if self.prompt is not None and self._clip is not None:
            return self._clip.encode_text_embeddings(self.prompt(), self.prompt.eot_index)
        if not bool(self.has_frozen_text):
            raise RuntimeError("this VadCLIP has neither a CLIP text encoder nor frozen text features")
        return self.frozen_text_features

    @torch.no_grad()
    def freeze_text(self) -> None:
        """Cache the (trained) prompt text features so scoring needs no CLIP."""
        self.frozen_text_features.copy_(self.text_features().float())
        self.has_frozen_text.fill_(True)

    # -------------------------------------------------------------- forward
    def forward(self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> VadOutput:
        """features [B, T, D] (padded), true ``lengths`` [B] → logits for every position.

        ``cfg.padding == "masked"``: logits of padded positions are 0 and real snippets'
        logits equal those of the unpadded sequence.  ``"paper"``: the input is padded
        to ``visual_length`` as the official code always is, padded positions take part
        (see :meth:`LGTAdapter.forward`) and the visual prompt pools over all positions."""
        b, t, d = features.shape
        if d != self.embed_dim:
            raise ValueError(f"features have dim {d}, model expects {self.embed_dim}")
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=features.device)
        lengths = lengths.to(features.device)
        official = self.cfg.padding == "paper"
        x = features.float()
        if official and t < self.cfg.visual_length:
            x = F.pad(x, (0, 0, 0, self.cfg.visual_length - t))
        v = self.adapter(x, lengths, official)                            # [B, T', D]
        if official:
            logits_c = self.classifier(v + self.mlp2(v))[..., 0]
        else:
            valid = length_mask(lengths, v.shape[1])
            vr = v[valid]                                                 # real snippets [N, D]
            logits_c = v.new_zeros(b, v.shape[1]).masked_scatter(valid, self.classifier(vr + self.mlp2(vr))[:, 0])

        text = self.text_features().to(v.dtype)                         # [C, D]
        # anomaly-focus visual prompt: C-branch logits as attention over snippets
        vis = F.normalize(logits_c[:, None, :] @ v, dim=-1)             # [B, 1, D]
        t_feat = text[None] + vis                                       # [B, C, D]
        t_feat = t_feat + self.mlp1(t_feat)
        logits_a = F.normalize(v, dim=-1) @ F.normalize(t_feat, dim=-1).transpose(1, 2)
        logits_a = logits_a / self.cfg.temperature
        return VadOutput(logits_c[:, :t], logits_a[:, :t], text)


def build_model(cfg: VadConfig, clip: Optional[FrozenCLIP] = None, device: str = "cpu") -> VadCLIP:
    """Model with its frozen CLIP text encoder built from the config (for training)."""
    if clip is None:
        clip = FrozenCLIP(cfg.clip, device=device)
    torch.manual_seed(cfg.seed)
    return VadCLIP(cfg, clip).to(device)


@torch.no_grad()
def score_video(model: VadCLIP, features: np.ndarray, device: str = "cpu", chunk_batch: int = 64):
    """Score one video's features [T, D]: split into ``visual_length`` chunks (as the
    official test), run them as one padded batch and stitch the results.

    Returns (anomaly [T] = sigmoid of C-branch, class_probs [T, C] = A-branch softmax)."""
    from vadclip.io.features import split_chunks

    model.eval()
    chunks, lengths = split_chunks(np.asarray(features, dtype=np.float32), model.cfg.visual_length)
    t = int(lengths.sum())
    anomaly, probs = [], []
    for s in range(0, len(chunks), chunk_batch):
        x = torch.from_numpy(chunks[s:s + chunk_batch]).to(device)
        ln = torch.from_numpy(lengths[s:s + chunk_batch]).to(device)
        out = model(x, ln)
        anomaly.append(torch.sigmoid(out.logits_c).reshape(-1).cpu())
        probs.append(out.logits_a.softmax(-1).reshape(-1, out.logits_a.shape[-1]).cpu())
    # chunks are full except the last, so the first t positions are the real snippets
    return torch.cat(anomaly)[:t].numpy(), torch.cat(probs)[:t].numpy()
