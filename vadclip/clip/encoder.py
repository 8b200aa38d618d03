"""The frozen CLIP image tower as an encoder of uint8 crops, and its precision on a
CPU (bf16 only where the CPU has native bf16 and the tower is timed faster in it)."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

import numpy as np

from vadclip.clip.spec import ClipSpec


BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}   # x86 (AVX-512 BF16, AMX), arm64 (FEAT_BF16)


def cpu_bf16_flags() -> List[str]:
    """The CPU's native bf16 instructions, as Linux names them in /proc/cpuinfo (none
    elsewhere, or where the CPU has none: bf16 is then emulated, slower than fp32)."""
    try:
        with open("/proc/cpuinfo") as fh:
            words = {w for line in fh if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    except OSError:
        return []
    return sorted(words & BF16_CPU_FLAGS)


_cpu_choice: Dict[Any, Any] = {}


def cpu_precision(visual, image_size: int, key: Any) -> Any:
    """``(precision, why)`` for the image tower ``visual`` on this CPU at torch's current
    thread count: bf16 where the CPU has native bf16 *and* the tower itself, timed on
    two images in fp32 and in a bf16 copy (alternating, best of three, after a
    warm-up), runs at least 1.1x faster in bf16; fp32 elsewhere (emulated bf16, or a
    model too small to gain).  About three seconds for ViT-B-16 on two cores, once per
    process, thread count and ``key`` (the model: the weights do not change the speed)."""
    import copy

    import torch

    key = (torch.get_num_threads(), key)
    if key in _cpu_choice:
        return _cpu_choice[key]
    flags = cpu_bf16_flags()
    if not flags:
        choice = ("fp32", "no native bf16 on this CPU")
    else:
        x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        towers = {torch.float32: visual, torch.bfloat16: copy.deepcopy(visual).to(torch.bfloat16)}

        def timed(dtype, reps: int) -> float:
            xx = x.to(dtype)
            with torch.inference_mode():
                t = time.perf_counter()
                for _ in range(reps):
                    towers[dtype](xx)
            return time.perf_counter() - t

        for dtype in towers:       # warm-up
            timed(dtype, 1)
        reps = 1                   # a small model repeats until a pass takes 50 ms, so the timing means something
        while timed(torch.float32, reps) < 0.05 and reps < 4096:
            reps *= 2
        best = {dtype: float("inf") for dtype in towers}
        for _ in range(3):         # alternating, best of three
            for dtype in towers:
                best[dtype] = min(best[dtype], timed(dtype, reps))
        speed = best[torch.float32] / max(best[torch.bfloat16], 1e-9)
        choice = ("bf16" if speed >= 1.1 else "fp32",
                  f"native bf16 ({', '.join(flags)}); this encoder timed {speed:.2f}x as fast in bf16 as in fp32 "
                  f"on {key[0]} threads")
    _cpu_choice[key] = choice
    return choice


class ClipImageEncoder:
    """Frozen open_clip image encoder on uint8 crops [n, crops, 3, S, S] → [n, crops, D]."""

    def __init__(self, spec: ClipSpec, precision: str = "auto", device: Optional[str] = None) -> None:
        import torch

        from vadclip.clip.backbone import FrozenCLIP

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.clip = FrozenCLIP(spec, device=self.device)
        self.precision_why = f"asked for {precision}"
        if precision == "auto":
            if self.device.startswith("cuda"):
                precision, self.precision_why = "fp16", "auto on a GPU"
            else:
                precision, self.precision_why = cpu_precision(self.clip.clip.visual, self.clip.image_size,
                                                              (spec.model, json.dumps(spec.kwargs, sort_keys=True)))
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.clip.to(self.dtype)
        # on a GPU: channels-last for the patch-embedding convolution; open_clip's attention
        # runs through scaled_dot_product_attention (flash/memory-efficient kernels in fp16/bf16)
        self.channels_last = self.device.startswith("cuda")
        if self.channels_last:
            self.clip.clip.visual.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(self.clip.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(self.clip.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.image_size = self.clip.image_size
        self.embed_dim = self.clip.embed_dim

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        import torch

        n, c = chunk.shape[:2]
        with torch.inference_mode():
            x = torch.from_numpy(np.require(chunk, requirements=["C", "W"])).to(self.device)
            x = x.reshape(n * c, *x.shape[2:]).float()
            x = ((x - self.mean) / self.std).to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            f = self.clip.encode_image(x).float()
        return f.reshape(n, c, -1).cpu().numpy()
