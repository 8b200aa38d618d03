"""Progress of one video's reading and decoding, as the work itself sees it.

A decode task watches the thread that reads and decodes a video (:func:`watching`); every
step of that thread that moves the video on — a chunk of bytes copied from object storage,
a batch of packets demuxed, a batch of frames decoded — calls :func:`beat`.  The task fails
the video only when no beat has come for its stall deadline (``--stall-timeout-s``): a slow
but progressing recording (an hour of 4K HEVC on one decode thread) always finishes, a read
that hangs or a decoder that never returns does not hold the job.  Outside a watched thread
:func:`beat` does nothing."""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator, Optional

_local = threading.local()


def beat() -> None:
    """The watched work moved on (called from inside it)."""
    fn: Optional[Callable[[], None]] = getattr(_local, "beat", None)
    if fn is not None:
        fn()


@contextlib.contextmanager
def watching(on_beat: Callable[[], None]) -> Iterator[None]:
    """Within the ``with``, :func:`beat` in this thread calls ``on_beat``."""
    before = getattr(_local, "beat", None)
    _local.beat = on_beat
    try:
        yield
    finally:
        _local.beat = before


class Heartbeat:
    """When the watched work last moved on (monotonic seconds); set at creation."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.last = clock()

    def __call__(self) -> None:
        self.last = self.clock()
