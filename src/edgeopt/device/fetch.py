"""Bounded HTTP for the device: every answer has a length cap counted in the bytes sent, a total
deadline and a minimum transfer rate from its first byte, so a hostile or broken network can
neither fill the device (nor its memory) nor hold the agent.

- One client (`device_client`) for every exchange: it asks for identity encoding, and an answer
  that carries a Content-Encoding anyway is refused unread (EncodedAnswer); bodies are read raw,
  so no decoder ever turns a few KB on the wire into GB in memory.
- Deadlines and rates are checked on the connection itself (a network backend under httpcore):
  from the request's first byte, status line and headers included, in any thread.
- Metadata goes through TUF's Updater with `BoundedFetcher` (TUF caps each metadata file's length).
- Target files (models) are fetched by `download_target` into a `.part` file that resumes with
  HTTP Range after a cut; a 206 answer must say (Content-Range) that it starts where the file
  stops, and the file can never grow past the signed length.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Limits:
    """How long and how slowly a download may go."""

    # Seconds to connect, and to wait for any one read.
    timeout_s: float = 30.0
    # Bytes per second a download must keep up over every `rate_window_s`: slower is a slow-retrieval attack.
    min_rate_bps: float = 4096.0
    rate_window_s: float = 30.0
    # A download's total time may not exceed this plus its length at the minimum rate.
    deadline_base_s: float = 120.0

    def deadline(self, length: int) -> float:
        return self.deadline_base_s + length / self.min_rate_bps


class SlowRetrieval(exceptions.SlowRetrievalError):
    """The server sent too slowly, or for too long."""


class EncodedAnswer(exceptions.DownloadError):
    """The server compressed its answer (a Content-Encoding) although the device asked for identity."""


class _Guard:
    """A deadline, and optionally a minimum rate, over every byte an exchange reads -- the
    status line and headers included. The rate window starts at the first byte received (the
    wait for it is bounded by the read timeout and the deadline)."""

    def __init__(self, what: str, seconds: float, limits: Limits | None) -> None:
        self.what = what
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.min_rate_bps = limits.min_rate_bps if limits else 0.0
        self.window_s = limits.rate_window_s if limits else math.inf
        self.window_start: float | None = None
        self.window_bytes = 0

    def seconds_left(self, now: float) -> float:
        left = self.deadline - now
        if left <= 0:
            raise SlowRetrieval(f"{self.what}: not done within {self.deadline - self.started:.0f} s")
        return left

    def received(self, count: int, now: float) -> None:
        self.seconds_left(now)
        if self.window_start is None:
            if count:
                self.window_start, self.window_bytes = now, count
            return
        self.window_bytes += count
        elapsed = now - self.window_start
        if elapsed >= self.window_s:
            rate = self.window_bytes / elapsed
            if rate < self.min_rate_bps:
                raise SlowRetrieval(f"{self.what}: {rate:.0f} B/s, under the minimum of {self.min_rate_bps:.0f} B/s")
            self.window_start, self.window_bytes = now, 0


# The guards of the exchanges under way in this thread (or task), innermost last. A connection
# takes the guards in force when it opens, and every read and write on it is bounded by them.
_GUARDS: contextvars.ContextVar[tuple[_Guard, ...]] = contextvars.ContextVar("edgeopt_device_guards", default=())


@contextlib.contextmanager
def _guarded(what: str, seconds: float, limits: Limits | None) -> Iterator[None]:
    token = _GUARDS.set((*_GUARDS.get(), _Guard(what, seconds, limits)))
    try:
        yield
    finally:
        _GUARDS.reset(token)


def deadline(seconds: float, what: str) -> contextlib.AbstractContextManager[None]:
    """Every connection opened in this block ends with SlowRetrieval once `seconds` have passed,
    whatever it waits on: connecting, headers trickled a byte at a time, a body, an answer. Works
    in any thread: the bound is each socket operation's own timeout, never a signal."""
    return _guarded(what, seconds, None)


def paced(limits: Limits, length: int | None, what: str) -> contextlib.AbstractContextManager[None]:
    """As `deadline` (the time `limits` allow for `length` bytes; none of its own when None), and
    every connection opened in this block must also read at least `limits.min_rate_bps` over each
    `limits.rate_window_s`, headers included."""
    return _guarded(what, math.inf if length is None else limits.deadline(length), limits)


def _bounded(guards: tuple[_Guard, ...], timeout: float | None) -> float | None:
    """`timeout`, shortened to the time left before the nearest deadline."""
    now = time.monotonic()
    for guard in guards:
        left = guard.seconds_left(now)
        if left != math.inf:
            timeout = left if timeout is None else min(timeout, left)
    return timeout


def _expired(guards: tuple[_Guard, ...]) -> None:
    """After a timeout: SlowRetrieval when it was a guard's deadline that ran out."""
    now = time.monotonic()
    for guard in guards:
        guard.seconds_left(now)


class _GuardedStream(httpcore.NetworkStream):
    """A connection whose reads and writes end at its guards' deadlines, and whose bytes received
    (the bytes on the wire: headers, chunk framing, body) are counted against their minimum rates."""

    def __init__(self, inner: httpcore.NetworkStream, guards: tuple[_Guard, ...]) -> None:
        self.inner, self.guards = inner, guards

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            data = self.inner.read(max_bytes, _bounded(self.guards, timeout))
        except httpcore.TimeoutException:
            _expired(self.guards)
            raise
        now = time.monotonic()
        for guard in self.guards:
            guard.received(len(data), now)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self.inner.write(buffer, _bounded(self.guards, timeout))
        except httpcore.TimeoutException:
            _expired(self.guards)
            raise

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        try:
            return _GuardedStream(self.inner.start_tls(ssl_context, server_hostname, _bounded(self.guards, timeout)), self.guards)
        except httpcore.TimeoutException:
            _expired(self.guards)
            raise

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, handing out guarded connections."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        guards = _GUARDS.get()
        try:
            inner = self.inner.connect_tcp(host, port, _bounded(guards, timeout), local_address, socket_options)
        except httpcore.TimeoutException:
            _expired(guards)
            raise
        return _GuardedStream(inner, guards)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        guards = _GUARDS.get()
        try:
            inner = self.inner.connect_unix_socket(path, _bounded(guards, timeout), socket_options)
        except httpcore.TimeoutException:
            _expired(guards)
            raise
        return _GuardedStream(inner, guards)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (http_proxy, https_proxy, all_proxy; no_proxy)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def device_client(server: str, limits: Limits) -> httpx.Client:
    """The device's HTTP client: it asks for identity encoding, follows no redirect, opens one
    connection per request (a device polls rarely, and a pooled connection the server closed
    meanwhile would only turn into a spurious failure) and bounds every connection by the
    `deadline` and `paced` blocks it is opened in."""
    transport = httpx.HTTPTransport(proxy=_environment_proxy(server), limits=httpx.Limits(max_keepalive_connections=0))
    # httpx 0.28 takes no network backend (encode/httpx discussion 3180): set it on its httpcore
    # pool, which passes it to every connection it opens (tests/test_device_hardening.py checks it).
    pool = transport._pool
    if not isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend):
        raise RuntimeError(f"this httpx ({httpx.__version__}) keeps no httpcore network backend; edgeopt pins httpx 0.28")
    pool._network_backend = _GuardedBackend(pool._network_backend)
    return httpx.Client(transport=transport, timeout=limits.timeout_s, follow_redirects=False,
                        headers={"Accept-Encoding": "identity"})


def refuse_encoded(response: httpx.Response, url: str) -> None:
    """An answer the server compressed cannot be capped by the bytes sent: refused, unread."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        response.close()
        raise EncodedAnswer(f"{url}: the server sent it with Content-Encoding {encoding!r} although the device asks "
                            "for identity; serve the files as they are (no compression by the server or a proxy)")


class BoundedFetcher(FetcherInterface):
    """TUF's fetcher over the device client: the minimum rate of `Limits` from the first byte,
    the raw bytes of an identity-encoded answer (TUF's length caps count what is sent); the
    caller's `deadline` bounds the whole refresh."""

    def __init__(self, client: httpx.Client, limits: Limits) -> None:
        self.client, self.limits = client, limits

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            with paced(self.limits, None, url):
                response = self.client.send(self.client.build_request("GET", url), stream=True)
        except httpx.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            response.close()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        refuse_encoded(response, url)
        return self._chunks(response, url)

    def _chunks(self, response: httpx.Response, url: str) -> Iterator[bytes]:
        try:
            yield from response.iter_raw()
        except httpx.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {type(exc).__name__}") from None
        finally:
            response.close()


class RangeRefused(Exception):
    """The server would not resume; the next attempt starts the file again."""


class Incomplete(Exception):
    """The answer ended before the signed length; the part is kept and the next attempt resumes it."""


def download_target(client: httpx.Client, url: str, part: Path, length: int, limits: Limits,
                    on_first_chunk: Any = None) -> None:
    """Fetch `url` into `part` until it holds `length` bytes, resuming what is there.

    Raises SlowRetrieval, RangeRefused, Incomplete (a short answer), EncodedAnswer, httpx errors,
    or exceptions.DownloadLengthMismatchError when the server sends more than `length` or the
    wrong range; OSError when the device's disk cannot take the bytes.
    """
    have = part.stat().st_size if part.exists() else 0
    if have > length:  # an oversize part can never become the signed file
        part.unlink()
        have = 0
    if have == length:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    with paced(limits, length - have, url), client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:
            part.unlink(missing_ok=True)
            raise RangeRefused(f"{url}: the server refused the range; the download restarts")
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if not match or int(match.group(1)) != have:
                part.unlink(missing_ok=True)
                raise exceptions.DownloadLengthMismatchError(
                    f"{url}: a resumed download must start at byte {have}; the server sent "
                    f"{response.headers.get('content-range')!r}")
            mode = "ab"
        elif response.status_code == 200:
            mode, have = "wb", 0  # the server sent it all again
        else:
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        refuse_encoded(response, url)
        with open(part, mode) as f:
            reported = False
            for chunk in response.iter_raw():
                if f.tell() + len(chunk) > length:
                    f.close()
                    part.unlink(missing_ok=True)
                    raise exceptions.DownloadLengthMismatchError(f"{url}: more than the signed {length} bytes")
                f.write(chunk)
                if not reported and on_first_chunk is not None:
                    f.flush()
                    on_first_chunk()
                    reported = True
            f.flush()
            os.fsync(f.fileno())
            if f.tell() < length:
                raise Incomplete(f"{url}: the answer ended at byte {f.tell()} of {length}; the download resumes")
