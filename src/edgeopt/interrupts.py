"""Ctrl-C and SIGTERM: remembered, raised, and checked again before any result is committed.

The CLI installs handlers that record the signal and raise (KeyboardInterrupt for SIGINT,
Terminated for SIGTERM), so the staged output of the running command is removed on the way out.
Native code (TensorFlow) can swallow the exception; the record cannot be swallowed, so
`raise_if_received` before an output is renamed into place, and the CLI's exit code, still
report the interrupt.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_received: int | None = None


class Terminated(BaseException):
    """SIGTERM arrived: stop like Ctrl-C, leaving nothing half-written."""


def received() -> int | None:
    """The signal number of the first SIGINT/SIGTERM since `install`, else None."""
    return _received


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _handle(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is None:
        _received = signum
    raise _exception(signum)


def install() -> tuple[Any, Any] | None:
    """Handle SIGINT and SIGTERM in this process (from the main thread only, as Python requires).
    Returns the handlers it replaced, for `restore`."""
    global _received
    _received = None
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    return previous


def restore(previous: tuple[Any, Any] | None) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def raise_if_received() -> None:
    if _received is not None:
        raise _exception(_received)
