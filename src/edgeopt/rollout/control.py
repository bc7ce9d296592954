"""Running a channel's staged rollout: start, pause, resume, abort, and the watch that promotes or halts.

    REPO/rollouts/<channel>.json   the rollout's state (policy.RolloutState), rewritten whole
    REPO/rollouts/<channel>.log    one JSON line per event: started, promoted, halted (and why), ...

Devices never read these files: what they obey is the share signed into the channel's metadata
(rollout.signing). Serve only metadata/ and targets/ from a static host; rollouts/ and fleet/ stay
on the release machine. Every operation takes `now` (seconds since the epoch) so a simulated clock
can drive it. While a rollout runs, every timestamp is signed short-lived (Repository.timestamp_expiry
reads the state files) and each watch pass renews it.

A start writes its state ("starting") before it signs and again after: a start interrupted between
the two is settled by the next start, watch or abort (running when the channel carries the model,
forgotten when it does not). Starting the release that already rolls out, or aborting a rollout that
already stopped, says so and changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError
from edgeopt.outputs import write_bytes_atomic
from edgeopt.release.repository import ROLLOUTS, Repository
from edgeopt.rollout import signing
from edgeopt.rollout.policy import ACTIVE, Criteria, Decision, Evidence, RolloutState, decide, model_sha256, percent

STOPPED = frozenset({"halted", "aborted"})
# Shortest and longest timestamp lifetime a rollout may ask for (seconds); the default is RolloutState's.
TIMESTAMP_EXPIRY_RANGE_S = (300.0, 86400.0)
# Reports older than this (seconds) no longer count as a device's evidence.
FRESH_S = 24 * 3600.0


def check_timestamp_expiry(seconds: float) -> float:
    low, high = TIMESTAMP_EXPIRY_RANGE_S
    if not low <= seconds <= high:
        raise ConfigError(f"--timestamp-expiry must be between {low / 60:g} min and {high / 3600:g} h, e.g. 2h")
    return seconds


def _iso(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(state: RolloutState) -> str:
    """One line for people: where the rollout stands and why."""
    if state.status == "starting":
        return (f"{state.channel}: a rollout is starting (model {state.model_sha256[:12]}), or its start was interrupted: "
                "the next 'edgeopt rollout watch', start or abort completes or forgets it")
    stage = f"stage {state.stage + 1} of {len(state.stages_ppm)} ({percent(state.share_ppm)})"
    head = f"{state.channel}: release {state.release} {state.status}"
    if state.status in ("running", "paused"):
        head += f" at {stage}"
    elif state.status in ("halted", "aborted"):
        head += f" at {stage} on {_iso(state.history[-1]['time']) if state.history else '?'}"
    return head + (f": {state.reason}" if state.reason else "")


class Rollouts:
    """The rollouts of one release repository."""

    def __init__(self, repo: Path) -> None:
        self.repository = Repository(repo)
        self.folder = Path(repo) / ROLLOUTS

    # --- state ----------------------------------------------------------------------------------
    def _settled(self, state: RolloutState | None, now: float) -> RolloutState | None:
        """A start interrupted between its signing and its state ("starting"): running when the
        channel carries its model, forgotten when it does not (nothing was signed)."""
        if state is None or state.status != "starting":
            return state
        current, _, _ = signing.channel_model(self.repository, state.channel)
        if current is None or model_sha256(current) != state.model_sha256:
            (self.folder / f"{state.channel}.json").unlink(missing_ok=True)
            self._log(state, "start-forgotten", now, "its start was interrupted before anything was signed")
            return None
        release = int((current.custom or {}).get("release", state.release))
        state = replace(state, release=release, status="running").moved(
            now, "started", f"release {release} to {percent(state.share_ppm)} of devices (an interrupted start, completed)")
        return self._save(state, "started", now)

    def state(self, channel: str) -> RolloutState | None:
        path = self.folder / f"{channel}.json"
        if not path.is_file():
            return None
        try:
            return RolloutState.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is damaged ({type(exc).__name__}: {exc}); restore it or remove it to forget the rollout") from None

    def states(self) -> list[RolloutState]:
        names = sorted(p.stem for p in self.folder.glob("*.json")) if self.folder.is_dir() else []
        return [s for n in names if (s := self.state(n)) is not None]

    def _save(self, state: RolloutState, event: str, now: float, decision: Decision | None = None) -> RolloutState:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.folder / f"{state.channel}.json", json.dumps(state.to_dict(), indent=1).encode())
        self._log(state, event, now, state.reason, decision)
        return state

    def _log(self, state: RolloutState, event: str, now: float, reason: str, decision: Decision | None = None) -> None:
        entry: dict[str, Any] = {"time": _iso(now), "event": event, "release": state.release, "stage": state.stage + 1,
                                 "share": percent(state.share_ppm), "status": state.status, "reason": reason}
        if decision is not None and decision.stats is not None:
            entry["stats"] = {k: v for k, v in vars(decision.stats).items() if k != "failed_devices"}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{state.channel}.log", "a") as log:
            log.write(json.dumps(entry) + "\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One operation at a time (cron's watch and a person's pause); not the repository's own lock,
        which signing takes inside."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _active(self, channel: str, now: float) -> RolloutState:
        state = self._settled(self.state(channel), now)
        if state is None:
            raise ConfigError(f"channel {channel} has no rollout; start one with 'edgeopt rollout start RUN --repo REPO --keys KEYS'")
        if state.status not in ACTIVE:
            raise ConfigError(f"the rollout of release {state.release} on {channel} is {state.status}; start a new one")
        return state

    # --- operations -----------------------------------------------------------------------------
    def start(self, keys: Path, channel: str, model: Path, labels: Path, custom: dict[str, Any],
              stages_ppm: tuple[int, ...], soak_s: tuple[float, ...], criteria: Criteria, now: float,
              timestamp_expiry_s: float = 7200.0) -> RolloutState:
        """Publish the model as the channel's next release, reaching the first stage's share only."""
        from edgeopt.methods.base import sha256_of

        criteria.check()
        if len(soak_s) == 1:
            soak_s = soak_s * len(stages_ppm)
        if len(soak_s) != len(stages_ppm) or not all(math.isfinite(s) and s >= 0 for s in soak_s):
            raise ConfigError(f"--soak needs one time or one per stage ({len(stages_ppm)}), each >= 0 s")
        check_timestamp_expiry(timestamp_expiry_s)
        sha = sha256_of(model)
        with self._locked():
            existing = self._settled(self.state(channel), now)
            if existing is not None and existing.status in ACTIVE:
                if existing.model_sha256 == sha:  # the same start again: nothing to do
                    return existing
                raise ConfigError(f"release {existing.release} is still rolling out on {channel} ({existing.status}); "
                                  f"abort it first: edgeopt rollout abort --repo {self.repository.path} --channel {channel}")
            if channel not in self.repository.channels():
                raise ConfigError(f"channel {channel} is not in {self.repository.path}; add it with 'edgeopt repo add-channel'")
            before, _, before_version = signing.channel_model(self.repository, channel)
            if before is not None and model_sha256(before) == sha:
                raise ConfigError(f"{model.name} is already the release on {channel}; nothing to roll out")
            if not signing.may_go_back_to(before):  # none, or withdrawn: a halt of this one withdraws it too
                before = None
            release = (before.custom or {}).get("release") if before is not None else None
            state = RolloutState(
                channel=channel, release=0, model_sha256=sha, stages_ppm=stages_ppm, soak_s=soak_s,
                criteria=criteria, started=now, stage_started=now, status="starting",
                previous_release=release if isinstance(release, int) else None,
                previous_sha256=model_sha256(before) if before is not None else None,
                previous_version=before_version if before is not None else None, timestamp_expiry_s=timestamp_expiry_s,
            )
            # the state first: the timestamp signed with the release is short-lived (Repository.timestamp_expiry)
            path = self.folder / f"{channel}.json"
            kept = path.read_bytes() if path.is_file() else None
            write_bytes_atomic(path, json.dumps(state.to_dict(), indent=1).encode())
            try:
                published = self.repository.publish_release(keys, channel, model, labels,
                                                             {**custom, "rollout": signing.rollout_field(0, stages_ppm)})
            except BaseException:  # nothing was signed: the rollout before (if any) stays as it was
                if kept is None:
                    path.unlink(missing_ok=True)
                else:
                    write_bytes_atomic(path, kept)
                raise
            state = replace(state, release=published["release"], status="running").moved(
                now, "started", f"release {published['release']} to {percent(stages_ppm[0])} of devices")
            return self._save(state, "started", now)

    def pause(self, channel: str, now: float, reason: str = "") -> RolloutState:
        """Hold the current stage (a breach still halts)."""
        with self._locked():
            state = self._active(channel, now)
            state = state.moved(now, "paused", reason or "paused by the operator", status="paused")
            return self._save(state, "paused", now)

    def resume(self, channel: str, now: float) -> RolloutState:
        with self._locked():
            state = self._active(channel, now)
            state = state.moved(now, "resumed", "resumed by the operator", status="running")
            return self._save(state, "resumed", now)

    def abort(self, keys: Path, channel: str, now: float, reason: str = "") -> RolloutState:
        """Stop the rollout and publish the release before it again (a new release number). A
        rollout that already stopped is returned as it is."""
        with self._locked():
            stopped = self._settled(self.state(channel), now)
            if stopped is not None and stopped.status in STOPPED:
                return stopped
            state = self._active(channel, now)
            state = self._halt(keys, state, now, f"aborted by the operator{': ' + reason if reason else ''}", "aborted")
            signing.renew_timestamp(self.repository, keys)  # no rollout left: back to the day
            return state

    def watch(self, keys: Path, channel: str, evidence: Iterable[Evidence], now: float) -> tuple[RolloutState, Decision]:
        """One pass: promote the stage, halt the rollout, mark it complete, or wait -- and say why."""
        with self._locked():
            state, decision = self._watch(keys, self._active(channel, now), evidence, now)
            # short-lived while the rollout runs, back to a day once it stopped: renewed here, every pass
            signing.renew_timestamp(self.repository, keys)
            return state, decision

    def _watch(self, keys: Path, state: RolloutState, evidence: Iterable[Evidence], now: float) -> tuple[RolloutState, Decision]:
        current, _, _ = signing.channel_model(self.repository, state.channel)
        if current is None or model_sha256(current) != state.model_sha256:
            again = (current.custom or {}).get("republished") if current is not None else None
            if isinstance(again, dict) and again.get("reverts") == state.release:  # a halt interrupted before its state
                state = state.moved(now, "halted", f"{again.get('reason', '')}; release {again.get('release')} published "
                                                   f"again as release {(current.custom or {}).get('release')}", status="halted")
                return self._save(state, "halted", now), Decision("wait", state.reason)
            state = state.moved(now, "superseded", "another release was published on the channel meanwhile",
                                status="superseded")
            return self._save(state, "superseded", now), Decision("wait", state.reason)
        fresh = [e for e in evidence if now - e.reported_at <= FRESH_S]
        decision = decide(state, fresh, now)
        if decision.action == "halt":
            return self._halt(keys, state, now, decision.reason, "halted", decision), decision
        if decision.action == "promote":
            stage = state.stage + 1
            signing.set_share(self.repository, keys, state.channel, state.model_sha256, stage, state.stages_ppm)
            state = state.moved(now, "promoted", f"{decision.reason}; now {percent(state.stages_ppm[stage])}",
                                stage=stage, stage_started=now)
            return self._save(state, "promoted", now, decision), decision
        if decision.action == "complete":
            state = state.moved(now, "complete", decision.reason, status="complete")
            return self._save(state, "complete", now, decision), decision
        return replace(state, reason=decision.reason), decision

    def _halt(self, keys: Path, state: RolloutState, now: float, why: str, status: str,
              decision: Decision | None = None) -> RolloutState:
        at = f"stage {state.stage + 1} ({percent(state.share_ppm)})"
        again, problem = None, ""
        if state.previous_version is not None:
            try:
                again = signing.publish_again(self.repository, keys, state.channel, state.previous_version, state.release, why)
            except ConfigError as exc:  # its files or metadata are gone: at least stop the bad release spreading
                problem = str(exc)
        if again is not None:
            what = f"release {state.previous_release} published again as release {again}"
        else:
            signing.withdraw(self.repository, keys, state.channel, state.model_sha256, state.stages_ppm)
            what = ("nothing to go back to (no release before it, or a withdrawn one): withdrawn (share 0), devices "
                    "that installed it keep it")
            if problem:
                what = (f"{problem}; withdrawn instead (share 0): devices that installed it keep it until you publish a "
                        f"working model (edgeopt publish RUN --repo {self.repository.path} --keys KEYS --channel {state.channel})")
        state = state.moved(now, status, f"{why} (at {at}); {what}", status=status)
        return self._save(state, status, now, decision)


def keep_watching(one_pass: Callable[[], None], every_s: float, sleep: Callable[[float], None],
                  log: Callable[[str], None]) -> None:
    """`rollout watch --loop`: a pass every `every_s` seconds, for ever. The first pass's failure is
    raised (a mistake of the command line, said at once); a later one -- the database or the
    repository unavailable for a while -- is logged in one line and retried, each time after twice
    the wait before (at most ten minutes, or `every_s` if longer)."""
    one_pass()
    failures = 0
    while True:
        sleep(min(every_s * 2 ** min(failures, 20), max(every_s, 600.0)))
        try:
            one_pass()
            failures = 0
        except Exception as exc:  # a long-running watch never ends on one bad pass
            failures += 1
            text = str(exc).strip().splitlines()
            log(f"watch pass failed ({failures} in a row): {text[0] if text else type(exc).__name__}; "
                f"next try in {min(every_s * 2 ** min(failures, 20), max(every_s, 600.0)):g} s")


def fleet_evidence(repo: Path, channel: str, db: str | None = None) -> list[Evidence]:
    """The latest report on the channel of every enrolled, unrevoked device (the fleet database), as
    evidence. No database at the default place: no device reported (an empty stage waits); a --db
    that does not exist is refused, not created empty."""
    from edgeopt.fleet.store import DEFAULT_DB, open_store
    from edgeopt.rollout.policy import evidence_from

    if db is None and not (Path(repo) / DEFAULT_DB).is_file():
        return []
    with open_store(repo, db, must_exist=True) as store:
        return [evidence_from(stored.report.model_dump(), stored.received.timestamp())
                for stored in store.latest(channel, enrolled_only=True)]
