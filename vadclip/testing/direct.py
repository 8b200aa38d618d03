"""Direct, single-process versions of what the jobs do, the oracles the tests and the
benchmarks compare the jobs against: a training batch built in memory (the worker's
shard cache must give the same tensors) and one video extracted in this process (the
Ray extraction job must give the same features)."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from vadclip.clip.encoder import ClipImageEncoder
from vadclip.jobs.extract import ExtractOptions
from vadclip.model.config import VadConfig
from vadclip.train.batches import prepare_row
from vadclip.video.decode import fetched, iter_snippet_chunks


def collate(rows: Sequence[Dict], cfg: VadConfig) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training batch: features [B, L, D] (pooled or padded), lengths [B], labels [B, C]."""
    xs, ns, ys = zip(*(prepare_row(r, cfg) for r in rows))
    return (torch.from_numpy(np.stack(xs)), torch.tensor(ns, dtype=torch.long),
            torch.from_numpy(np.stack(ys)))


def extract_video(path: str, encoder: ClipImageEncoder, opts: ExtractOptions):
    """Single-process extraction of one video → (VideoInfo, features [crops, T, D])."""
    with fetched(path) as local:
        info, chunks = iter_snippet_chunks(local, opts.snippet_len, encoder.image_size, opts.crops,
                                           opts.chunk_snippets, name=path, decoder=opts.decoder,
                                           device=opts.decode_device)
        feats = np.concatenate([encoder.encode(c) for c in chunks], axis=0)
    feats = feats[:info.snippet_count(opts.snippet_len)]    # a truncated file: past its last decoded frame, padding
    return info, feats.transpose(1, 0, 2)
