"""Running a channel's staged rollout: start, pause, resume, abort, and the watch that promotes or halts.

    REPO/rollouts/<channel>.json   the rollout's state (policy.RolloutState), rewritten whole
    REPO/rollouts/<channel>.log    one JSON line per event: started, promoted, halted (and why), ...

Devices never read these files: what they obey is the share signed into the channel's metadata
(rollout.signing). Serve only metadata/ and targets/ from a static host; rollouts/ and fleet/ stay
on the release machine. Every operation takes `now` (seconds since the epoch) so a simulated clock
can drive it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError
from edgeopt.outputs import write_bytes_atomic
from edgeopt.release.repository import Repository
from edgeopt.rollout import signing
from edgeopt.rollout.policy import ACTIVE, Criteria, Decision, Evidence, RolloutState, decide, model_sha256, percent

ROLLOUTS = "rollouts"
# Reports older than this (seconds) no longer count as a device's evidence.
FRESH_S = 24 * 3600.0


def _iso(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(state: RolloutState) -> str:
    """One line for people: where the rollout stands and why."""
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
        entry: dict[str, Any] = {"time": _iso(now), "event": event, "release": state.release, "stage": state.stage + 1,
                                 "share": percent(state.share_ppm), "status": state.status, "reason": state.reason}
        if decision is not None and decision.stats is not None:
            entry["stats"] = {k: v for k, v in vars(decision.stats).items() if k != "failed_devices"}
        with open(self.folder / f"{state.channel}.log", "a") as log:
            log.write(json.dumps(entry) + "\n")
        return state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One operation at a time (cron's watch and a person's pause); not the repository's own lock,
        which signing takes inside."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _active(self, channel: str) -> RolloutState:
        state = self.state(channel)
        if state is None:
            raise ConfigError(f"channel {channel} has no rollout; start one with 'edgeopt rollout start RUN --repo REPO --keys KEYS'")
        if state.status not in ACTIVE:
            raise ConfigError(f"the rollout of release {state.release} on {channel} is {state.status}; start a new one")
        return state

    # --- operations -----------------------------------------------------------------------------
    def start(self, keys: Path, channel: str, model: Path, labels: Path, custom: dict[str, Any],
              stages_ppm: tuple[int, ...], soak_s: tuple[float, ...], criteria: Criteria, now: float) -> RolloutState:
        """Publish the model as the channel's next release, reaching the first stage's share only."""
        from edgeopt.methods.base import sha256_of

        criteria.check()
        if len(soak_s) == 1:
            soak_s = soak_s * len(stages_ppm)
        if len(soak_s) != len(stages_ppm) or min(soak_s) < 0:
            raise ConfigError(f"--soak needs one time or one per stage ({len(stages_ppm)}), each >= 0 s")
        with self._locked():
            existing = self.state(channel)
            if existing is not None and existing.status in ACTIVE:
                raise ConfigError(f"release {existing.release} is still rolling out on {channel} ({existing.status}); "
                                  f"abort it first: edgeopt rollout abort --repo {self.repository.path} --channel {channel}")
            if channel not in self.repository.channels():
                raise ConfigError(f"channel {channel} is not in {self.repository.path}; add it with 'edgeopt repo add-channel'")
            before, _, before_version = signing.channel_model(self.repository, channel)
            sha = sha256_of(model)
            if before is not None and model_sha256(before) == sha:
                raise ConfigError(f"{model.name} is already the release on {channel}; nothing to roll out")
            custom = {**custom, "rollout": signing.rollout_field(0, stages_ppm)}
            published = self.repository.publish_release(keys, channel, model, labels, custom)
            state = RolloutState(
                channel=channel, release=published["release"], model_sha256=sha, stages_ppm=stages_ppm, soak_s=soak_s,
                criteria=criteria, started=now, stage_started=now,
                previous_release=(before.custom or {}).get("release") if before is not None else None,
                previous_sha256=model_sha256(before) if before is not None else None,
                previous_version=before_version if before is not None else None,
            ).moved(now, "started", f"release {published['release']} to {percent(stages_ppm[0])} of devices")
            return self._save(state, "started", now)

    def pause(self, channel: str, now: float, reason: str = "") -> RolloutState:
        """Hold the current stage (a breach still halts)."""
        with self._locked():
            state = self._active(channel)
            state = state.moved(now, "paused", reason or "paused by the operator", status="paused")
            return self._save(state, "paused", now)

    def resume(self, channel: str, now: float) -> RolloutState:
        with self._locked():
            state = self._active(channel)
            state = state.moved(now, "resumed", "resumed by the operator", status="running")
            return self._save(state, "resumed", now)

    def abort(self, keys: Path, channel: str, now: float, reason: str = "") -> RolloutState:
        """Stop the rollout and publish the release before it again (a new release number)."""
        with self._locked():
            state = self._active(channel)
            return self._halt(keys, state, now, f"aborted by the operator{': ' + reason if reason else ''}", "aborted")

    def watch(self, keys: Path, channel: str, evidence: Iterable[Evidence], now: float) -> tuple[RolloutState, Decision]:
        """One pass: promote the stage, halt the rollout, mark it complete, or wait -- and say why."""
        with self._locked():
            state = self._active(channel)
            current, _, _ = signing.channel_model(self.repository, channel)
            if current is None or model_sha256(current) != state.model_sha256:
                state = state.moved(now, "superseded", "another release was published on the channel meanwhile",
                                    status="superseded")
                return self._save(state, "superseded", now), Decision("wait", state.reason)
            fresh = [e for e in evidence if now - e.reported_at <= FRESH_S]
            decision = decide(state, fresh, now)
            if decision.action == "halt":
                return self._halt(keys, state, now, decision.reason, "halted", decision), decision
            if decision.action == "promote":
                stage = state.stage + 1
                signing.set_share(self.repository, keys, channel, state.model_sha256, stage, state.stages_ppm)
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
        if state.previous_version is not None:
            again = signing.publish_again(self.repository, keys, state.channel, state.previous_version, state.release, why)
            what = f"release {state.previous_release} published again as release {again}"
        else:
            signing.withdraw(self.repository, keys, state.channel, state.model_sha256, state.stages_ppm)
            what = "no release before it: withdrawn (share 0), devices that installed it keep it"
        state = state.moved(now, status, f"{why} (at {at}); {what}", status=status)
        return self._save(state, status, now, decision)


def fleet_evidence(repo: Path, channel: str, db: str | None = None) -> list[Evidence]:
    """Every device's latest report on the channel (the fleet database), as evidence."""
    from edgeopt.fleet.store import open_store
    from edgeopt.rollout.policy import evidence_from

    with open_store(repo, db) as store:
        return [evidence_from(stored.report.model_dump(), stored.received.timestamp()) for stored in store.latest(channel)]
