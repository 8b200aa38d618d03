"""What a command leaves on the console (issue #47): Ray's line about restartable actors
with arguments in the object store (ray-project/ray#53727), which no user can act on,
stays in Ray's log files and off stderr; everything else the process writes arrives,
also when the process dies before it can flush anything."""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

NOISE_TEXT = "has constructor arguments in the object store and max_restarts > 0"


@pytest.fixture
def ray_tmp():
    """Ray's temp folder for the command (short: Ray's socket paths have a length limit)."""
    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_extract_keeps_rays_restart_line_in_its_logs_and_off_stderr(sample_videos, tmp_path, ray_tmp):
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    env.pop("VADCLIP_VERBOSE", None)
    p = subprocess.run([sys.executable, "-m", "vadclip.cli", "extract", sample_videos["manifest"], "--out",
                        str(tmp_path / "x"), "--tiny-clip"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads(p.stdout)
    assert s["videos_ok"] >= len(sample_videos["good"])
    assert "[extract] done:" in p.stderr and "FAILED" in p.stderr       # the project's own lines arrive
    assert NOISE_TEXT not in p.stderr, p.stderr
    # Ray did log it (the encoders are a restartable actor pool fed through the object
    # store), into the driver's log file of the session
    logs = glob.glob(os.path.join(ray_tmp, "**", "python-core-driver-*.log"), recursive=True)
    assert logs and any(NOISE_TEXT in open(f, errors="replace").read() for f in logs)


FILTERED = r"""
import os, sys
from vadclip.cli.stderr import quiet_ray_stderr
quiet_ray_stderr(verbose=sys.argv[1] == "1")
os.write(2, b"first line\n")
os.write(2, b"[2026-12-07 03:09:24,585 E 1 1] core_worker.cc:2465: Actor with class name: "
            b"'MapWorker(MapBatches(EncodeStage))' and ID: '6286' has constructor arguments in the object store "
            b"and max_restarts > 0. If the arguments in the object store go out of scope ...\n")
os.write(2, b"[2026-12-07 03:09:25,000 E 1 1] core_worker.cc:99: some other error of Ray's\n")
os.write(2, b"\rprogress 50%")            # a bar redrawn in place: no newline
os.write(2, b"\rprogress 100%\n")
os.write(2, b"last words before the crash")
os.abort()
"""


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_filter_drops_only_the_restart_line_and_outlives_a_crash(tmp_path, verbose):
    p = subprocess.run([sys.executable, "-c", FILTERED, verbose], capture_output=True, timeout=60)
    assert p.returncode == -6       # SIGABRT: nothing was flushed or restored at exit
    err = p.stderr.decode()
    assert "first line\n" in err and "some other error of Ray's\n" in err
    assert "\rprogress 50%\rprogress 100%\n" in err and err.endswith("last words before the crash")
    assert (NOISE_TEXT in err) == (verbose == "1")
