"""Loopback servers for the delivery tests: the real update server in a thread, Python's plain
static file server, and a hostile server that tampers with what it sends. Everything binds to
127.0.0.1 and stops by itself. And a simulated clock for the agent's loop."""

from __future__ import annotations

import functools
import http.server
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from edgeopt.device.poll import LoopConfig, run_agent
from edgeopt.device.schedule import PollPolicy
from edgeopt.release.server import create_app


class Clock:
    """Simulated time for run_agent's clock and sleep: it starts now (TUF checks expiry against the
    real date) and moves only when slept, so no test waits for a back-off."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def run_loop(agent: Any, max_checks: int, clock: Clock | None = None, **policy: Any) -> Clock:
    """The loop `edgeopt device run` runs, for `max_checks` checks on a simulated clock; returns the clock."""
    clock = clock or Clock()
    config = LoopConfig(policy=PollPolicy(**{"interval_s": 60.0, "backoff_base_s": 1.0, **policy}), report_every_s=1e9)
    run_agent(agent, config, clock=clock, sleep=clock.sleep, rng=random.Random(0), max_checks=max_checks)
    return clock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """`edgeopt serve` in a background thread of the test process."""

    def __init__(self, repo: Path, rate_kbps: float | None = None, **app_options) -> None:
        self.port = free_port()
        self.app = create_app(repo, rate_kbps, **app_options)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.store.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class StaticServer:
    """Python's http.server on the repository folder: the agent must work against any static server."""

    def __init__(self, repo: Path) -> None:
        handler = functools.partial(_Quiet, directory=str(repo))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# A hostile server's hook: (request path, file bytes or None, request headers) -> a response, or
# None to serve the file honestly (a POST: 404). A response is (status, headers, body); body is
# bytes, an iterator of (bytes, seconds to wait before sending them), or TrickledHeaders.
Hook = Callable[[str, "bytes | None", dict], "tuple[int, dict, object] | None"]


class TrickledHeaders:
    """An answer whose headers never end: the status line, then one header byte every `wait_s`
    seconds, each well within any read timeout, until the client hangs up."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s


class HostileServer:
    """Serves the repository's files, except where `hook` says to tamper."""

    def __init__(self, repo: Path, hook: Hook) -> None:
        repo = Path(repo)
        self.requests: list[str] = []
        self.stopping = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                outer.requests.append(path)
                file = (repo / path.lstrip("/")).resolve()
                data = file.read_bytes() if file.is_file() and file.is_relative_to(repo.resolve()) else None
                response = hook(path, data, dict(self.headers))
                if response is None:
                    if data is None:
                        self._send(404, {}, b"not found")
                        return
                    response = (200, {}, data)
                self._send(*response)

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                outer.requests.append(f"POST {path}")
                response = hook(path, None, dict(self.headers))
                self._send(*(response or (404, {}, b"")))

            def _send(self, status: int, headers: dict, body: object) -> None:
                if isinstance(body, TrickledHeaders):
                    self._trickle(status, body.wait_s)
                    return
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                try:
                    if isinstance(body, bytes):
                        if "Content-Length" not in headers:
                            self.send_header("Content-Length", str(len(body)))
                        self.send_header("Connection", "close")
                        self.end_headers()
                        self.wfile.write(body)
                    else:  # a paced stream, no length: as long as the hook wants
                        self.send_header("Connection", "close")
                        self.end_headers()
                        for chunk, wait in body:  # type: ignore[attr-defined]
                            time.sleep(wait)
                            self.wfile.write(chunk)
                            self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent hung up: that is the point
                self.close_connection = True

            def _trickle(self, status: int, wait_s: float) -> None:
                try:
                    self.wfile.write(f"HTTP/1.1 {status} OK\r\n".encode())
                    self.wfile.flush()
                    while not outer.stopping.wait(wait_s):
                        self.wfile.write(b"X")  # a header line that never ends
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent hung up: that is the point
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class CuttingProxy:
    """Forwards to a server, but closes each response after `cut_after` bytes."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            client.settimeout(5)
            upstream.settimeout(5)
            try:
                request = client.recv(65536)
                upstream.sendall(request)
                sent = 0
                limit = self.cut_after if b"/targets/" in request.split(b"\r\n", 1)[0] else 1 << 40
                while sent < limit:
                    data = upstream.recv(min(4096, limit - sent))
                    if not data:
                        break
                    client.sendall(data)
                    sent += len(data)
            except OSError:
                pass  # closing mid-transfer is the point

    def __enter__(self) -> CuttingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()
