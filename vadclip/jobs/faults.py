"""Fault injection for the tests and ``bench/soak.py``, read in this one place: the
environment variable ``VADCLIP_INJECT_FAULTS`` of the job's driver, e.g.
``exit_in_epoch=2`` (a training rank's process dies in the middle of epoch 2) or
``raise_after_epoch=1`` (a rank raises after epoch 1).  Each fault happens once per
training: a marker file beside the run's storage remembers it.  Production option
classes know nothing of this."""
from __future__ import annotations

import os
from typing import Dict, Optional

from vadclip.errors import InputError
from vadclip.io import storage

ENV = "VADCLIP_INJECT_FAULTS"
TRAIN_FAULTS = ("exit_in_epoch", "raise_after_epoch")


def train_faults() -> Optional[Dict[str, int]]:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    out: Dict[str, int] = {}
    for item in text.split(","):
        kind, _, epoch = item.partition("=")
        if kind.strip() not in TRAIN_FAULTS or not epoch.strip().isdigit():
            raise InputError(f"{ENV}={text!r}: expected {'|'.join(TRAIN_FAULTS)}=EPOCH[,...]")
        out[kind.strip()] = int(epoch)
    return out


def fault_due(faults: Optional[Dict[str, int]], marker: Optional[str], kind: str, epoch: int) -> bool:
    """``kind`` is asked for at this (0-based) epoch and has not happened yet in this training."""
    if not faults or faults.get(kind) != epoch + 1 or not marker or storage.exists(marker):
        return False
    storage.write_bytes(marker, kind.encode())
    return True
