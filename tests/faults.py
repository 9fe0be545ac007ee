"""Fault injection for the reliability tests: a flaky HTTP proxy in front of a real S3 endpoint,
and a way to find (and kill) the Ray Train workers of this test's own Ray cluster only."""

from __future__ import annotations

import http.client
import random
import signal
import threading
import time
from typing import Callable, TypeVar
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import psutil

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, *, timeout: float = 400,
               alive: Callable[[], bool] = lambda: True, why: Callable[[], str] = lambda: "") -> T:
    """Poll ``condition`` until it returns something truthy and return it; fail naming ``what`` after
    ``timeout`` seconds, or as soon as ``alive()`` is false (the run it waits on has ended)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert alive(), f"{what}: the run ended first {why()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s {why()}"
        time.sleep(0.05)
    return value


def default_sigint() -> None:
    """``preexec_fn`` for a command a test will Ctrl-C: a non-interactive shell starts background
    jobs with SIGINT ignored, children inherit that and Python keeps it, so the signal would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


S3_503 = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
          b"<Message>injected fault</Message></Error>")


class FlakyS3Proxy:
    """Forwards HTTP requests to ``upstream``, answering a share ``error`` of them with an S3 503
    error and dropping a share ``drop`` (connection closed, no response), and cutting a share ``cut``
    of GET responses mid-body (the full Content-Length announced, half the bytes sent, the connection
    closed), drawn from a seeded RNG; counts what it injected. ``hold``: the first PUT whose path ends with it is held (``held`` is
    set) until ``release`` is set, then dropped: a write caught in mid-flight for a test to kill
    its writer."""

    def __init__(self, upstream: str, *, error: float = 0.0, drop: float = 0.0, cut: float = 0.0, seed: int = 0,
                 hold: str | None = None):
        self.upstream = urlparse(upstream)
        self.error, self.drop, self.cut = error, drop, cut
        self.hold, self.held, self.release = hold, threading.Event(), threading.Event()
        self.rng = random.Random(seed)
        self.injected = {"error": 0, "drop": 0, "cut": 0, "forwarded": 0}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:-2]
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                if proxy.hold and self.command == "PUT" and self.path.split("?")[0].endswith(proxy.hold):
                    with proxy.lock:
                        first = not proxy.held.is_set()
                        proxy.held.set()
                    if first:
                        proxy.release.wait()
                        self.close_connection = True
                        self.connection.close()
                        return
                with proxy.lock:
                    draw = proxy.rng.random()
                if draw < proxy.drop:
                    with proxy.lock:
                        proxy.injected["drop"] += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                if draw < proxy.drop + proxy.error:
                    with proxy.lock:
                        proxy.injected["error"] += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(S3_503)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(S3_503)
                    return
                cut = self.command == "GET" and draw < proxy.drop + proxy.error + proxy.cut
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    # a HEAD answer has no body but the object's length
                    self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                                     else str(len(data)))
                    self.end_headers()
                    if cut and len(data) > 1:
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.close()
                        with proxy.lock:
                            proxy.injected["cut"] += 1
                        return
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()
                with proxy.lock:
                    proxy.injected["forwarded"] += 1

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FlakyS3Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def ray_train_workers(raylet_pid: int) -> list[psutil.Process]:
    """The RayTrainWorker actor processes under one raylet (this test's cluster, not another's)."""
    try:
        children = psutil.Process(raylet_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in children:
        try:
            if any("RayTrainWorker" in part for part in p.cmdline()[:1]):
                out.append(p)
        except psutil.Error:
            pass
    return out


def local_raylet_pids() -> list[int]:
    """PIDs of the raylets of the Ray cluster this process is connected to (ray.init in-process)."""
    import ray

    node = ray._private.worker._global_node
    pids = []
    for info in node.all_processes.get("raylet", []):
        pids.append(info.process.pid)
    return pids
