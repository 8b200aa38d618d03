"""Run a command as it runs on a machine that lacks something, for real: in a private
mount namespace where FFmpeg's shared libraries are an empty file (what torchcodec
meets on a machine without FFmpeg: its libraries do not load), and/or in a private
network namespace with nothing but loopback (a machine with no network).  Needs root
and ``unshare`` (util-linux); CI runs as root."""
from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

# the libraries FFmpeg installs (not libavahi/libavif, which only share the prefix)
FFMPEG_LIB = re.compile(r"^lib(avcodec|avformat|avutil|avdevice|avfilter|swscale|swresample|postproc|avresample)"
                        r"\.so(\.\d+)*$")
LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/lib/*-linux-gnu",
            "/lib/*-linux-gnu", "/usr/local/lib/*-linux-gnu")


def ffmpeg_libraries() -> List[str]:
    """The system's FFmpeg shared libraries, as real files (symlinks resolved)."""
    dirs = {d for pat in LIB_DIRS for d in glob.glob(pat) if os.path.isdir(d)}
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout if shutil.which("ldconfig") else ""
    dirs |= {os.path.dirname(m) for m in re.findall(r"=>\s*(\S+)", out)}
    return sorted({os.path.realpath(os.path.join(d, f)) for d in dirs for f in os.listdir(d) if FFMPEG_LIB.match(f)})


def isolation_missing() -> Optional[str]:
    """Why this machine cannot imitate another here, or None."""
    if os.geteuid() != 0:
        return "needs root (unshare -m and mount)"
    if not shutil.which("unshare"):
        return "needs unshare (util-linux)"
    try:
        rc = subprocess.run(["unshare", "-m", "-n", "true"], capture_output=True, timeout=30).returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed ({e})"
    return None if rc == 0 else "unshare -m -n is not permitted here"


def run_isolated(cmd: Sequence[str], *, no_ffmpeg: bool = False, offline: bool = False,
                 env: Optional[Dict[str, str]] = None, timeout: float = 600, cwd: Optional[str] = None,
                 small_disk: Optional[Tuple[str, str]] = None) -> subprocess.CompletedProcess:
    """``cmd`` on this machine as a machine without FFmpeg (``no_ffmpeg``) and/or
    without a network (``offline``: loopback only) would run it; ``small_disk``: (a folder,
    a size such as ``256k``) mounted as a disk of that size, which fills up."""
    steps = []
    if small_disk is not None:
        steps.append(f"mount -t tmpfs -o size={small_disk[1]} tmpfs {shlex.quote(small_disk[0])}")
    if no_ffmpeg:
        steps += [f"mount --bind /dev/null {shlex.quote(lib)}" for lib in ffmpeg_libraries()]
    if offline:
        steps.append("ip link set lo up")
    steps.append("exec " + shlex.join(list(cmd)))
    ns = ["-m"] + (["-n"] if offline else [])
    return subprocess.run(["unshare", *ns, "sh", "-c", " && ".join(steps)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "VADCLIP_PROGRESS_BARS": "0",
                                                          "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **(env or {})})
