"""The device agent: keep the channel's current signed, working release active; never end up
without one.

One check: verify the channel's metadata (update.py) -> decide (up to date, rejected before, held
back by a staged rollout, or new) -> check free space and fetch the release into staging
(update.py: a file the device holds already is reused when its bytes match the signed hash; the
rest is downloaded, resumable, with a deadline and a minimum rate; length and sha256 checked) ->
smoke-test it, move it into releases/, switch `active`, smoke-test it there, roll back on failure
(activate.py) -> report (report.py). When nothing is new, the repository's fleet benchmark job
runs (jobs.py). When to check is the loop's business (poll.py, schedule.py).

A release is refused for good only when its own signed bytes prove it bad: a smoke test that fails
twice, or a model file that matches its signed hash but unpacks to something else. What the network
can do -- a short answer, extra bytes, a wrong range, bytes that do not match the signed hash, a
slow server -- is retried with backoff however often it comes: a device cannot tell a lying network
from a bad upload, and a network must never be able to block a valid release for good. Every
refusal, including rollback and freeze attempts, is logged, reported and counted in the exit code
of --once.
"""

from __future__ import annotations

import collections
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeopt.device.activate import Activator
from edgeopt.device.config import AgentConfig
from edgeopt.device.faults import Refused, Retry
from edgeopt.device.fetch import device_client
from edgeopt.device.health import record_install
from edgeopt.device.jobs import run_bench_job
from edgeopt.device.report import Reporter
from edgeopt.device.state import DeviceState
from edgeopt.device.update import MAX_RELEASE, Channel, model_sha256, release_record, signed_custom
from edgeopt.errors import ConfigError

__all__ = ["Agent", "AgentConfig", "Outcome", "OutcomeKind"]

OutcomeKind = Literal["up-to-date", "no-release", "activated", "refused", "retry", "unreachable", "rolled-back", "skipped",
                      "held"]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    message: str
    release: int | None = None

    @property
    def refused(self) -> bool:
        """An available release (or metadata) was refused: exit code 3 for --once."""
        return self.kind in ("refused", "rolled-back", "skipped")

    def __str__(self) -> str:
        return self.message


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = DeviceState(config.state)
        if not Path(config.root).is_file():
            raise ConfigError(f"trusted root {config.root} does not exist; copy the repository's newest root to the device "
                              "(edgeopt repo trust-anchor REPO --out root.json)")
        self.base = config.base
        self.client = device_client(self.base, config.limits)
        self.channel = Channel(config, self.state, self.client)
        self.activator = Activator(config, self.state)
        self.reporter = Reporter(config, self.state, self.client)
        self.last_error: str | None = None
        self.last_latency_ms: float | None = None
        self.refusals: collections.deque[dict[str, str]] = collections.deque(maxlen=10)

    # --- one check --------------------------------------------------------------------------
    def check_once(self) -> Outcome:
        """Look for the channel's current release and activate it if it passes every check."""
        try:
            return self._check()
        except OSError as exc:  # the device's own storage (full, read-only, failing): metadata or a release
            self.state.clean_staging(keep=None)  # a partial download gives its space back; the next check starts again
            return self._fail("retry", f"will retry: the device could not write its files: {exc}")

    def _check(self) -> Outcome:
        recovered = self.state.recover()
        if recovered:
            self.state.log("recovered", active=recovered)
        try:
            updater, model, labels = self.channel.current()
        except Refused as exc:
            return self._refused(None, str(exc), permanent=False)
        except Retry as exc:
            return self._fail("retry", f"will retry: {exc}")
        except ConnectionError as exc:
            return self._unreachable(exc)
        if model is None or labels is None:
            return Outcome("no-release", f"no release on channel {self.config.channel} yet")
        sha = model.hashes.get("sha256", "")  # what is downloaded: identifies the release
        number = signed_custom(model).get("release")
        release = number if isinstance(number, int) and 1 <= number <= MAX_RELEASE else 0
        active = self.state.record_of("active")
        if (active is not None and active["model"]["sha256"] == model_sha256(model)
                and active["labels"]["sha256"] == labels.hashes.get("sha256")):
            self.state.clean_staging(keep=None)
            run_bench_job(self.config, self.state, self.channel, self.reporter, updater)  # idle: the fleet's benchmark
            return Outcome("up-to-date", "up-to-date", release)
        reason = self.state.rejected(sha)
        if reason:
            return Outcome("skipped", f"skipped release {release} (rejected before: {reason})", release)
        if not release:
            return self._refused(sha, f"release number {number!r} is not a whole number from 1 to {MAX_RELEASE}",
                                 permanent=True)
        from edgeopt.rollout.policy import held_back

        held = held_back(self.config.device_id, model, has_model=active is not None)
        if held:  # a staged rollout whose signed share does not reach this device yet
            return Outcome("held", held, release)
        try:
            return self._install(model, labels, release)
        except Refused as exc:
            if exc.permanent:
                record_install(self.state.root, release, "refused", detail=str(exc))
            return self._refused(sha, f"release {release}: {exc}", permanent=exc.permanent, release=release)
        except Retry as exc:
            return self._fail("retry", f"will retry: release {release}: {exc}", release)
        except ConnectionError as exc:
            return self._unreachable(exc, release)

    def _install(self, model: Any, labels: Any, release: int) -> Outcome:
        """Fetch, check and activate the release (or roll it back); raises Refused or Retry."""
        record = release_record(model, labels, release, self.config.channel)
        folder = self.state.release_dir(record)
        staging = None
        if self.state.complete(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)
            staging = self.channel.stage(record, model, labels)
        switched = self.activator.activate(staging, folder, record)
        if switched.rolled_back is not None:
            self.last_error = f"rolled back release {release}: {switched.rolled_back}"
            self._remember_refusal(self.last_error)
            self.report()
            return Outcome("rolled-back", self.last_error, release)
        self.last_latency_ms = switched.latency_ms
        self.last_error = None
        self.report()
        return Outcome("activated", f"activated release {release}", release)

    def _unreachable(self, exc: Exception, release: int | None = None) -> Outcome:
        self.last_error = "repository unreachable"
        self.state.log("unreachable", error=str(exc)[:200])
        return Outcome("unreachable", "unreachable", release)

    def _fail(self, kind: OutcomeKind, message: str, release: int | None = None) -> Outcome:
        self.last_error = message
        self.state.log(kind, release=release, reason=message)
        self.report()
        return Outcome(kind, message, release)

    def _refused(self, sha: str | None, message: str, permanent: bool, release: int | None = None) -> Outcome:
        if permanent and sha:
            self.state.reject(sha, message)
        self._remember_refusal(message)
        return self._fail("refused", f"rejected: {message}", release)

    def _remember_refusal(self, what: str) -> None:
        self.refusals.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": what[:300]})

    # --- reports ------------------------------------------------------------------------------
    def profile(self) -> dict[str, Any]:
        return self.reporter.profile()

    def report(self) -> None:
        """Tell the release side (best effort: a static server has no /status; the next check reports again)."""
        self.reporter.report(self.last_error, self.last_latency_ms, self.refusals)
