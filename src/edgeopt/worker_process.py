"""Starting a worker process and telling how it ended: shared by the build's second process
(methods.build), the device benchmark's per-variant processes (device.variant_worker) and the
runtime health check (runtimes.health).

A worker is a new interpreter, never a fork: TensorFlow's and the runtimes' threads do not
survive a fork, and multiprocessing's spawn would import the caller's main script again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time


def python_command(boot: str, *args: str) -> list[str]:
    """The command that runs `boot` in a new interpreter with this process's sys.path (argv[1] is
    that path as JSON, `args` follow). -P: the current folder does not go before it."""
    return [sys.executable, "-P", "-c", "import sys, json; sys.path[:] = json.loads(sys.argv[1]); " + boot,
            json.dumps(sys.path), *args]


def signal_name(code: int | None) -> str | None:
    """The name of the signal that ended a process with exit status `code` (negative), else None."""
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def how_it_ended(code: int) -> str:
    """A process's exit status in words: a negative status is the signal that killed it."""
    name = signal_name(code)
    return f"was killed by {name}" if name else f"ended (exit code {code})"


def die_with(parent: int) -> None:
    """Linux kills this process when its parent dies (PR_SET_PDEATHSIG); elsewhere, and in case
    the parent died before that was set, a thread watches for it."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def no_core_files() -> None:
    """This process writes no core file when it crashes (a runtime may, and the crash is reported)."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
