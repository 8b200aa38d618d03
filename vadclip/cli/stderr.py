"""Ray's lines that no user can act on, kept off a command's stderr (and in Ray's logs).

Ray 2.60 logs an error line whenever an actor that Ray may restart gets an argument
through the object store (ray-project/ray#53727: the restart would fail if that object
were lost).  Two such actors run in every job, and neither argument can be lost while the
job runs, so the line says nothing about this job:

* Ray Data's actor pools (the CLIP encoders: ``MapWorker(MapBatches(EncodeStage))``) are
  restartable by default and always receive their operator's transform as an object the
  driver put and holds until the dataset ends; the line comes from the driver's core
  worker, written straight to the process's stderr (file descriptor 2);
* Ray Train's ``PreemptionWatcher`` (it lets training checkpoint before a spot node is
  reclaimed, so it stays on) is created the same way by the training controller; its
  line reaches the driver through Ray's log forwarding.

The forwarded line is dropped by Ray's own switch for that (``RAY_DEDUP_LOGS_SKIP_REGEX``,
read when Ray is imported).  The driver's own line has no switch: file descriptor 2 goes
through a small filter process that forwards everything else as it comes (a partial line
that cannot be Ray's is not held back, so progress bars still redraw) and outlives a
driver that crashes, so nothing the driver wrote before dying is lost.  ``--verbose`` or
``VADCLIP_VERBOSE=1`` keeps everything; every line stays in Ray's own log files."""
from __future__ import annotations

import os
import sys
from typing import Optional

# Ray's line for an actor created with a restartable argument in the object store
NOISE = (r"core_worker\.cc:\d+: Actor with class name: '[^']*' and ID: '[0-9a-f]+' has constructor "
         r"arguments in the object store and max_restarts > 0")

_FILTER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)    # a terminal's Ctrl-C is for the command
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # it ends when the command's stderr closes
noise = re.compile(sys.argv[1].encode())
held = b""

def put(data):
    try:
        os.write(1, data)
    except OSError:
        pass

while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    held += chunk
    *lines, held = held.split(b"\n")
    out = b"".join(line + b"\n" for line in lines if not noise.search(line))
    # a partial line is held only while it may be the start of one of Ray's log lines
    if held and (not held.startswith(b"[") or len(held) > 65536):
        out, held = out + held, b""
    if out:
        put(out)
if held and not noise.search(held):
    put(held)
"""


class _Filter:
    def __init__(self) -> None:
        self.proc = None
        self.saved: Optional[int] = None


_state = _Filter()


def quiet_ray_stderr(verbose: bool) -> None:
    """Keep :data:`NOISE` off this process's stderr (before Ray is imported), unless
    ``verbose``.  Whether stderr was a terminal is kept for the progress bars' default."""
    if verbose or _state.proc is not None:
        return
    skip = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
    os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = f"(?:{skip})|(?:{NOISE})" if skip else NOISE
    try:
        tty = os.isatty(2)
    except OSError:
        return
    os.environ.setdefault("VADCLIP_PROGRESS_BARS", "1" if tty else "0")
    import subprocess

    try:
        sys.stderr.flush()
        saved = os.dup(2)
        r, w = os.pipe()
        # a session of its own: a terminal's signals go to the command, and the filter
        # ends when the last writer of the pipe is gone
        proc = subprocess.Popen([sys.executable, "-S", "-c", _FILTER, NOISE], stdin=r, stdout=saved,
                                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    except OSError:
        return      # no filter (no fork, no descriptors left): Ray's line stays, nothing else changes
    os.close(r)
    os.dup2(w, 2)
    os.close(w)
    _state.proc, _state.saved = proc, saved
    import atexit

    atexit.register(restore)


def restore(timeout: float = 5.0) -> None:
    """Hand file descriptor 2 back to the real stderr and let the filter write out what it
    holds, so nothing this command wrote shows after it has exited."""
    if _state.proc is None:
        return
    proc, saved = _state.proc, _state.saved
    _state.proc = _state.saved = None
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(saved, 2)
    os.close(saved)
    try:
        proc.wait(timeout=timeout)
    except Exception:  # noqa: BLE001 - a child of this process still holds the pipe: it ends with it
        pass
