"""What can go wrong in an update, and where the kill -9 tests make it go wrong.

Two kinds of fault: `Retry` (transient: the next check tries again) and `Refused` (metadata or a
release that must not be used; `permanent` when its own signed bytes prove it bad). A fault of a
release's own files is counted per release (`count_fault`): retried until it repeats, then refused
for good.

Fault injection, for the kill -9 tests only: at each named point of an update the agent appends the
point's name to the file FAULT_REPORT_ENV names, so a test knows *where* it killed instead of
guessing from timing or folders; at the point FAULT_STOP_ENV names it then waits to be killed.
"""

from __future__ import annotations

import os
import time

from edgeopt.device.state import DeviceState

FAULT_REPORT_ENV = "EDGEOPT_FAULT_REPORT"
FAULT_STOP_ENV = "EDGEOPT_FAULT_STOP_AT"
FAULT_STOP_S = 60.0
# The points, in the order an update passes them.
FAULT_POINTS = ("download", "staged", "renamed", "previous", "switched")


class Retry(Exception):
    """A transient fault; the next check tries again."""


class Refused(Exception):
    """Metadata or a release that must not be used; `permanent` when it is proven bad."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def count_fault(state: DeviceState, sha256: str, kind: str, message: str, failures_to_reject: int) -> Exception:
    """A fault of this release: retried until it repeats, then refused for good."""
    if state.count_failure(sha256, kind) >= failures_to_reject:
        return Refused(f"{message} (again)", permanent=True)
    return Retry(message)


def fault_point(name: str) -> None:
    """Report reaching `name`, and stop there, when the fault-injection variables say so."""
    report = os.environ.get(FAULT_REPORT_ENV)
    if report:
        with open(report, "a") as f:
            f.write(name + "\n")
    if os.environ.get(FAULT_STOP_ENV) == name:
        time.sleep(FAULT_STOP_S)
