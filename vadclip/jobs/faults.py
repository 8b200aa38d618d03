"""Fault injection for the tests and ``bench/soak.py``, read in this one place: the
environment variable ``VADCLIP_INJECT_FAULTS`` of the job's driver, items separated by
``;``:

* ``exit_in_epoch=2`` — a training rank's process dies in the middle of epoch 2;
* ``raise_after_epoch=1`` — a training rank raises after epoch 1;
* ``encoder_exit=VIDEO_ID:MARKER`` — the extraction encoder actor that meets the video
  dies (``os._exit``) unless the marker file exists, which it then creates.

Each fault happens once: a marker file remembers it (for training, beside the run's
storage).  The driver reads the variable and hands what it asks for to the workers;
production option classes know nothing of this."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from vadclip.errors import InputError
from vadclip.io import storage

ENV = "VADCLIP_INJECT_FAULTS"
TRAIN_FAULTS = ("exit_in_epoch", "raise_after_epoch")
KINDS = TRAIN_FAULTS + ("encoder_exit",)


def _items() -> List[Tuple[str, str]]:
    text = os.environ.get(ENV, "").strip()
    out = []
    for item in filter(None, (i.strip() for i in text.split(";"))):
        kind, _, value = item.partition("=")
        if kind.strip() not in KINDS or not value.strip():
            raise InputError(f"{ENV}={text!r}: expected KIND=VALUE[;...] with KIND one of {', '.join(KINDS)}")
        out.append((kind.strip(), value.strip()))
    return out


def train_faults() -> Optional[Dict[str, int]]:
    """{"exit_in_epoch": N, "raise_after_epoch": M} as asked for (None: none)."""
    out: Dict[str, int] = {}
    for kind, value in _items():
        if kind in TRAIN_FAULTS:
            if not value.isdigit():
                raise InputError(f"{ENV}: {kind} needs an epoch number, got {value!r}")
            out[kind] = int(value)
    return out or None


def encoder_exits() -> List[List[str]]:
    """[[video_id, marker file], ...]: the encoder that meets the video dies, once."""
    out = []
    for kind, value in _items():
        if kind == "encoder_exit":
            vid, sep, marker = value.rpartition(":")
            if not sep or not vid or not marker:
                raise InputError(f"{ENV}: encoder_exit needs VIDEO_ID:MARKER, got {value!r}")
            out.append([vid, marker])
    return out


def exit_once(exits: Sequence[Sequence[str]], video_id: str) -> None:
    """In an encoder: die here if this video is a victim whose marker does not exist yet."""
    for victim, marker in exits or ():
        if video_id == victim and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)


def fault_due(faults: Optional[Dict[str, int]], marker: Optional[str], kind: str, epoch: int) -> bool:
    """``kind`` is asked for at this (0-based) epoch and has not happened yet in this training."""
    if not faults or faults.get(kind) != epoch + 1 or not marker or storage.exists(marker):
        return False
    storage.write_bytes(marker, kind.encode())
    return True
