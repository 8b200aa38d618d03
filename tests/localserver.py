"""Server processes the tests start on 127.0.0.1 (moto's S3-API server, an MLflow
tracking server, `mlflow models serve`): a free port, and waiting until one answers."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(url: str, proc: subprocess.Popen, what: str, timeout_s: float,
                         interval_s: float = 0.5) -> None:
    """Return once ``url`` answers; raise, with the end of the process's stderr where it
    was piped, if the process exits or ``timeout_s`` passes first."""
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            if proc.poll() is not None or time.time() - t0 > timeout_s:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                err = proc.stderr.read()[-2000:] if proc.stderr else ""
                raise RuntimeError(f"{what} did not start on {url}{': ' + str(err) if err else ''}")
            time.sleep(interval_s)
