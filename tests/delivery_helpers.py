"""Loopback servers for the delivery tests: the real update server in a thread, and a proxy
that closes connections mid-transfer. Everything binds to 127.0.0.1 and stops by itself."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from edgeopt.delivery.server import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """`edgeopt serve` in a background thread of the test process."""

    def __init__(self, repo: Path, rate_kbps: float | None = None) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(repo, rate_kbps), host="127.0.0.1", port=self.port, log_level="error")
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
                while sent < self.cut_after:
                    data = upstream.recv(min(4096, self.cut_after - sent))
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
