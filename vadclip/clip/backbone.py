"""Frozen open_clip backbone: image encoder for extraction, text encoder that takes
prompt embeddings (learnable context around class-name tokens) for the A-branch."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from vadclip.clip.catalog import open_clip_module
from vadclip.clip.spec import ClipSpec
from vadclip.io.provenance import OPENAI_MEAN, OPENAI_STD


RANDOM_INIT_SEED = 0

log = logging.getLogger(__name__)

def build_open_clip(model_name: str, pretrained: Optional[str], model_kwargs: Optional[Dict[str, Any]] = None,
                    device: str = "cpu") -> nn.Module:
    """Create an open_clip model; ``pretrained`` is a tag (e.g. ``openai``), a local
    weights file or a storage URI, or ``None`` for random init (offline).  The weights
    come from a file on this node: the job's weights where a worker was handed them
    (:func:`vadclip.clip.weights.activate`), else resolved here once
    (:func:`vadclip.clip.weights.resolve_weights`).  A tag's activation (QuickGELU for the
    OpenAI weights) and preprocessing come from open_clip's pretrained config."""
    open_clip = open_clip_module()

    from vadclip.clip.weights import activate, active, resolve_weights

    kwargs = dict(model_kwargs or {})
    if pretrained:
        w = active(model_name, pretrained)
        if w is None:
            w = resolve_weights(model_name, pretrained)
            activate(w)
        for k, v in w.create_kwargs().items():
            kwargs.setdefault(k, v)
        return open_clip.create_model(model_name, pretrained=w.local_file(), device=device, **kwargs)
    # random init is seeded so every process (encoder actors, train workers, scorers)
    # builds the very same "random" CLIP; it is asked for, so open_clip's note that no
    # weights were loaded is not passed on as a warning
    root = logging.getLogger()
    root.addFilter(_asked_for_random_init)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return open_clip.create_model(model_name, pretrained=None, device=device, **kwargs)
    finally:
        root.removeFilter(_asked_for_random_init)


def _asked_for_random_init(record: logging.LogRecord) -> bool:
    return "No pretrained weights loaded" not in record.getMessage()


def _is_causal(mask: Optional[torch.Tensor]) -> bool:
    """True for CLIP's text mask: -inf above the diagonal, 0 on and below it."""
    if mask is None or mask.dim() != 2:
        return False
    upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.all(torch.isneginf(mask[upper]))) and bool(torch.all(mask[~upper] == 0))


class FrozenCLIP(nn.Module):
    """Wraps an open_clip CLIP model with all gradients off and eval mode pinned."""

    def __init__(self, spec: Optional[ClipSpec] = None, device: str = "cpu",
                 model: Optional[nn.Module] = None) -> None:
        super().__init__()
        open_clip = open_clip_module()

        self.spec = spec = ClipSpec.of(spec)
        self.clip = model if model is not None else build_open_clip(spec.model, spec.pretrained, spec.kwargs, device)
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        self._tokenizer = open_clip.get_tokenizer(spec.model)
        visual = self.clip.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        pcfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = tuple(pcfg.get("mean", OPENAI_MEAN))
        self.std = tuple(pcfg.get("std", OPENAI_STD))
        self.text_is_causal = _is_causal(getattr(self.clip, "attn_mask", None))

    def train(self, mode: bool = True) -> "FrozenCLIP":  # frozen: always eval
        super().train(False)
        return self

    # ------------------------------------------------------------------ sizes
    @property
    def embed_dim(self) -> int:
        proj = self.clip.text_projection
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def text_width(self) -> int:
        return int(self.clip.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.clip.positional_embedding.shape[0])

    # ------------------------------------------------------------------ image
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: normalised float tensor [N, 3, S, S] → [N, D] (not L2-normalised)."""
        return self.clip.encode_image(images)

    # ------------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    @torch.no_grad()
    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.token_embedding(tokens)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                               truncate: bool = True) -> torch.Tensor:
        """Run the frozen text transformer on input embeddings [C, L, W].

        Gradients flow to ``embeddings`` (the learnable prompt context) while every
        CLIP weight stays frozen.  Features are pooled at ``eot_index`` [C].

        With CLIP's causal mask the feature at the EOT token depends only on the
        tokens up to it, so (``truncate``) the transformer runs on the first
        ``max(eot_index) + 1`` positions only: the same result for a fraction of
        the 77-token cost.  ``truncate=False`` runs all positions (the reference)."""
        clip = self.clip
        mask = clip.attn_mask
        if truncate and self.text_is_causal:
            n = int(eot_index.max()) + 1
            embeddings = embeddings[:, :n]
            mask = mask[:n, :n]
        n = embeddings.shape[1]
        x = embeddings + clip.positional_embedding[:n].to(embeddings.dtype)
        # open_clip < 2.27 runs its transformer sequence-first (L, N, D); later ones batch-first
        seq_first = not getattr(clip.transformer, "batch_first", False)
        x = clip.transformer(x.transpose(0, 1) if seq_first else x, attn_mask=mask)
        x = clip.ln_final(x.transpose(0, 1) if seq_first else x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = clip.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x
