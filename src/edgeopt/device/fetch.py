"""Bounded HTTP for the device: every download has a length cap, a total deadline and a minimum
transfer rate, so a hostile or broken network can neither fill the device nor hold the agent.

- Metadata goes through TUF's Updater with this fetcher (TUF caps each metadata file's length).
- Target files (models) are fetched by `download_target` into a `.part` file that resumes with
  HTTP Range after a cut; a 206 answer must say (Content-Range) that it starts where the file
  stops, and the file can never grow past the signed length.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class _Pace:
    """Raises SlowRetrieval when a transfer falls under the minimum rate or passes its deadline."""

    def __init__(self, limits: Limits, length: int, url: str) -> None:
        self.limits, self.url = limits, url
        self.started = self.window_start = time.monotonic()
        self.deadline = self.started + limits.deadline(length)
        self.window_bytes = 0

    def add(self, count: int) -> None:
        now = time.monotonic()
        self.window_bytes += count
        if now > self.deadline:
            raise SlowRetrieval(f"{self.url}: not complete within {self.deadline - self.started:.0f} s")
        if now - self.window_start >= self.limits.rate_window_s:
            rate = self.window_bytes / (now - self.window_start)
            if rate < self.limits.min_rate_bps:
                raise SlowRetrieval(f"{self.url}: {rate:.0f} B/s, under the minimum of {self.limits.min_rate_bps:.0f} B/s")
            self.window_start, self.window_bytes = now, 0


@contextlib.contextmanager
def wall_clock(seconds: float, what: str) -> Iterator[None]:
    """Raise SlowRetrieval when the block takes longer than `seconds`, whatever it waits on: the
    pace is checked per chunk and the timeout per read, so a server trickling its headers, or a
    report's answer, one byte every few seconds would pass both. SIGALRM, so only in the main
    thread (where the agent runs); elsewhere the pace and the read timeout are the bounds."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SlowRetrieval(f"{what}: not done within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class BoundedFetcher(FetcherInterface):
    """TUF's fetcher over httpx, with the deadline and minimum rate of `Limits`."""

    def __init__(self, client: Any, limits: Limits) -> None:
        self.client, self.limits = client, limits

    def _fetch(self, url: str) -> Iterator[bytes]:
        import httpx

        try:
            response = self.client.send(self.client.build_request("GET", url), stream=True)
        except httpx.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            response.close()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        return self._chunks(response, url)

    def _chunks(self, response: Any, url: str) -> Iterator[bytes]:
        import httpx

        # metadata is capped by TUF at a few MB; the pace is judged as for a file of that size
        pace = _Pace(self.limits, 1 << 20, url)
        try:
            for chunk in response.iter_bytes():
                pace.add(len(chunk))
                yield chunk
        except httpx.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {type(exc).__name__}") from None
        finally:
            response.close()


class RangeRefused(Exception):
    """The server would not resume; the next attempt starts the file again."""


class Incomplete(Exception):
    """The answer ended before the signed length; the part is kept and the next attempt resumes it."""


def download_target(client: Any, url: str, part: Path, length: int, limits: Limits,
                    on_first_chunk: Any = None) -> None:
    """Fetch `url` into `part` until it holds `length` bytes, resuming what is there.

    Raises SlowRetrieval, RangeRefused, Incomplete (a short answer), httpx errors, or
    exceptions.DownloadLengthMismatchError when the server sends more than `length` or the wrong range.
    """
    have = part.stat().st_size if part.exists() else 0
    if have > length:  # an oversize part can never become the signed file
        part.unlink()
        have = 0
    if have == length:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    pace = _Pace(limits, length - have, url)
    with client.stream("GET", url, headers=headers) as response:
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
        with open(part, mode) as f:
            reported = False
            for chunk in response.iter_bytes():
                if f.tell() + len(chunk) > length:
                    f.close()
                    part.unlink(missing_ok=True)
                    raise exceptions.DownloadLengthMismatchError(f"{url}: more than the signed {length} bytes")
                f.write(chunk)
                pace.add(len(chunk))
                if not reported and on_first_chunk is not None:
                    f.flush()
                    on_first_chunk()
                    reported = True
            f.flush()
            os.fsync(f.fileno())
            if f.tell() < length:
                raise Incomplete(f"{url}: the answer ended at byte {f.tell()} of {length}; the download resumes")
