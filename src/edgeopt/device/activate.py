"""Making a staged release the active one, and undoing it when it does not work here.

Order: smoke-test the staged release -> rename it into releases/ (complete) -> point `previous`
at the old release -> switch `active` (an atomic symlink rename) -> smoke-test the active release;
on failure switch back. A kill -9 at any point leaves `active` a complete release (the old or the
new one): DeviceState.recover() finishes the job at the next start. The named fault points
(faults.py) mark each step for the kill -9 tests.

A smoke test that fails is a fault of the release (retried once, then refused for good); one that
fails on the release's own signed files (MalformedRelease) refuses it at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.device.config import AgentConfig
from edgeopt.device.faults import Refused, count_fault, fault_point
from edgeopt.device.health import record_busy, record_install
from edgeopt.device.smoke import MalformedRelease, SmokeTestFailed, smoke_test
from edgeopt.device.state import DeviceState


@dataclass(frozen=True)
class Switched:
    """What a switch came to: the release runs (with its smoke-test latency), or it was rolled back."""

    latency_ms: float | None = None
    # Why the post-switch smoke test undid the switch; None: the release is active.
    rolled_back: str | None = None


class Activator:
    def __init__(self, config: AgentConfig, state: DeviceState) -> None:
        self.config, self.state = config, state

    @property
    def samples(self) -> Path:
        return self.state.root / "samples"

    def activate(self, staging: Path | None, folder: Path, record: dict[str, Any]) -> Switched:
        """Smoke-test the staged release (None: `folder` is complete already), keep it in releases/,
        switch to it and check it there. The sorting loop's frames meanwhile count in no in-service
        window (health.record_busy): a new release is judged once its install is done. Raises
        Refused or Retry when the staged release fails."""
        started = time.time()
        try:
            if staging is not None:
                self.check_staged(staging, record)
                fault_point("staged")
                os.replace(staging, folder)
            return self.switch(folder, record)
        finally:
            record_busy(self.state.root, started, time.time())

    def check_staged(self, staging: Path, record: dict[str, Any]) -> None:
        """The smoke test before the switch; raises Refused or Retry (a first failure)."""
        sha, release = record["download"]["sha256"], record["release"]
        try:
            smoke_test(staging, record, self.samples, self.config.smoke)
        except MalformedRelease as exc:  # its own signed files say so: no second try needed
            raise Refused(str(exc), permanent=True) from None
        except SmokeTestFailed as exc:
            record_install(self.state.root, release, "smoke-test-failed", detail=str(exc))
            raise count_fault(self.state, sha, "smoke", f"smoke test failed: {exc}", self.config.failures_to_reject) from None

    def switch(self, folder: Path, record: dict[str, Any]) -> Switched:
        """Make `folder` active (the old release becomes previous) and check it there; roll back on failure."""
        sha, release = record["download"]["sha256"], record["release"]
        state = self.state
        old = state.record_of("active")
        fault_point("renamed")
        if old is not None:
            state.point("previous", state.release_dir(old))
        fault_point("previous")
        state.point("active", folder)
        state.log("activated", release=release, sha256=sha, previous=old["release"] if old else None)
        fault_point("switched")
        try:
            check = smoke_test(state.root / "active", record, self.samples, self.config.smoke)
        except SmokeTestFailed as exc:
            if old is not None:
                state.point("active", state.release_dir(old))
            else:
                (state.root / "active").unlink()
            error = count_fault(state, sha, "smoke", f"post-switch check failed: {exc}", self.config.failures_to_reject)
            state.log("rolled-back", release=release, to=old["release"] if old else None, reason=str(exc))
            record_install(state.root, release, "rolled-back", detail=str(exc))
            if isinstance(error, Refused):
                state.reject(sha, str(error))
            return Switched(rolled_back=str(exc))
        state.clear_failures(sha)
        record_install(state.root, release, "activated")
        removed = state.prune(self.config.keep_releases)
        if removed:
            state.log("pruned", releases=removed)
        return Switched(latency_ms=check["latency_ms"])
