"""A fault-injecting HTTP proxy for the object-storage tests: it stands on 127.0.0.1 in
front of the real S3-API server (moto's, :mod:`s3server`) and, for a share of the
requests it forwards, answers ``503 SlowDown`` instead, resets the connection, or
answers late — what a throttling object store and a flaky network do to a job.

It reads each request whole (``Content-Length`` or ``Transfer-Encoding: chunked``,
which it decodes and forwards with a length), forwards it to the server, and sends
the answer back as the server gave it (a ``HEAD`` keeps its ``Content-Length`` and has
no body).  ``counts`` says how many requests of each method it saw and what it did to
them.  Faults are drawn from a seeded generator, so a run is reproducible in its
rates (not in which request gets which, since requests arrive concurrently)."""
from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b'<Message>Access Denied</Message></Error>')
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultProxy:
    """``rates``: per method (``PUT``, ``GET``, ``HEAD``, ``POST``, ``DELETE``; ``*`` for the
    rest) the share answered ``503 SlowDown``; ``reset``: the share of any request whose
    connection is reset before an answer; ``slow``/``slow_s``: the share answered
    ``slow_s`` seconds late; ``stall``: GETs of the objects whose path holds a key
    hang for its number of seconds; ``deny``: the methods answered ``403 AccessDenied`` (a role
    without the permission, an expired credential).  ``enabled`` can be switched off and on."""

    def __init__(self, upstream: str, rates: Dict[str, float], reset: float = 0.0, slow: float = 0.0,
                 slow_s: float = 1.0, seed: int = 0, stall: Optional[Dict[str, float]] = None, deny=()):
        self.deny = set(deny)
        self.stall = dict(stall or {})     # {text in the path: seconds}: GETs of those objects hang that long
        self.upstream = urlparse(upstream)
        self.rates, self.reset, self.slow, self.slow_s = rates, reset, slow, slow_s
        self.rng, self.lock = random.Random(seed), threading.Lock()
        self.counts: Counter = Counter()
        self.seen: List[Tuple[str, str]] = []      # (method, path) of every request, in order
        self.enabled = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _error(self, code: int, reason: str, xml: bytes) -> None:
                """An S3 error answer (its XML body; a HEAD gets the headers alone)."""
                self.send_response(code, reason)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(xml)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(xml)

            def _handle(self):
                body = self._body()
                with proxy.lock:
                    proxy.seen.append((self.command, self.path))
                hang = next((t for k, t in proxy.stall.items() if k in self.path), 0.0)
                if hang and self.command == "GET":
                    with proxy.lock:
                        proxy.counts["GET stalled"] += 1
                    threading.Event().wait(hang)
                fault = proxy._draw(self.command)
                if proxy.enabled and self.command in proxy.deny:
                    with proxy.lock:
                        proxy.counts[f"{self.command} denied"] += 1
                    return self._error(403, "Forbidden", ACCESS_DENIED)
                if fault == "reset":
                    # RST instead of an answer (SO_LINGER 0), as a dropped connection
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "503":
                    return self._error(503, "Slow Down", SLOW_DOWN)
                if fault == "slow":
                    threading.Event().wait(proxy.slow_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP and not (k.lower() == "content-length" and self.command != "HEAD"):
                            self.send_header(k, v)
                    if self.command != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _draw(self, method: str) -> Optional[str]:
        with self.lock:
            self.counts[f"{method} requests"] += 1
            if not self.enabled:
                return None
            x = self.rng.random()
            rate = self.rates.get(method, self.rates.get("*", 0.0))
            for kind, share in (("reset", self.reset), ("503", rate), ("slow", self.slow)):
                if x < share:
                    self.counts[f"{method} {kind}"] += 1
                    return kind
                x -= share
            return None

    def faults(self) -> int:
        return sum(v for k, v in self.counts.items() if not k.endswith("requests"))


@contextmanager
def fault_proxy(upstream: str, rates: Dict[str, float], **kw):
    """A running :class:`FaultProxy` in front of ``upstream``, shut down on exit."""
    p = FaultProxy(upstream, rates, **kw)
    t = threading.Thread(target=p.server.serve_forever, daemon=True)
    t.start()
    try:
        yield p
    finally:
        p.server.shutdown()
        p.server.server_close()
