"""VadCLIP losses, vectorised over the batch and masked by true lengths.

* :func:`mil_loss` — C-branch MIL: BCE on the mean of the top-k sigmoid scores.
* :func:`mil_align_loss` — A-branch MIL-Align: per-class top-k mean of the alignment
  logits, softmax cross-entropy against the (normalised multi-)label.
* :func:`contrast_loss` — mean |cos(normal, abnormal_i)| of the prompt text features.
k = T // 16 + 1 for a video of T real snippets (official).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vadclip.model.network import length_mask


def topk_count(n: int) -> int:
    """k of the top-k mean for a video of ``n`` real snippets: n // 16 + 1 (official), at most n."""
    return max(1, min(n // 16 + 1, n))


def topk_k(lengths: torch.Tensor) -> torch.Tensor:
    """:func:`topk_count` for a batch of lengths [B]."""
    return torch.minimum(lengths // 16 + 1, lengths).clamp(min=1)


def topk_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of the k = T//16+1 largest values over time of x [B, T] or [B, T, C]
    among the first ``lengths`` entries → [B] or [B, C]."""
    squeeze = x.dim() == 2
    if squeeze:
        x = x[..., None]
    b, t, _ = x.shape
    valid = length_mask(lengths, t)[:, :, None]
    k = topk_k(lengths)
    kmax = int(k.max())
    top = x.masked_fill(~valid, float("-inf")).topk(kmax, dim=1).values        # [B, kmax, C]
    take = (torch.arange(kmax, device=x.device)[None, :] < k[:, None])[:, :, None]
    out = torch.where(take, top, torch.zeros_like(top)).sum(1) / k[:, None].to(x.dtype)
    return out[:, 0] if squeeze else out


def mil_loss(logits_c: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """labels: multi-hot [B, C] with the normal class at index 0."""
    target = 1.0 - labels[:, 0].to(logits_c.dtype)
    p = topk_mean(torch.sigmoid(logits_c), lengths)
    return F.binary_cross_entropy(p, target)


def mil_align_loss(logits_a: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    target = labels / labels.sum(dim=1, keepdim=True)
    inst = topk_mean(logits_a, lengths)                                        # [B, C]
    return -(target * F.log_softmax(inst, dim=1)).sum(dim=1).mean()


def contrast_loss(text_features: torch.Tensor) -> torch.Tensor:
    n = F.normalize(text_features, dim=-1)
    return (n[1:] @ n[0]).abs().mean()


def vadclip_loss(out, labels: torch.Tensor, lengths: torch.Tensor, contrast_weight: float):
    """Total loss and its parts (floats) for a :class:`~vadclip.model.network.VadOutput`."""
    l1 = mil_loss(out.logits_c, labels, lengths)
    l2 = mil_align_loss(out.logits_a, labels, lengths)
    l3 = contrast_loss(out.text_features)
    total = l1 + l2 + contrast_weight * l3
    return total, {"loss": float(total.detach()), "loss_mil": float(l1.detach()), "loss_align": float(l2.detach()),
                   "loss_contrast": float(l3.detach())}
