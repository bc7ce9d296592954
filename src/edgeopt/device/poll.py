"""The agent's loop: when to check (schedule.py), what a check costs when nothing changed, what
the server asked for, and when to report.

An idle check is one small request: timestamp.json, with the validators (ETag, Last-Modified) of
the copy the device already trusts. A 304 -- or a 200 whose bytes are the trusted file's, from a
server without validators -- means nothing changed: every other TUF file is named by the timestamp.
The full TUF refresh (root chain, timestamp, snapshot, targets) runs when the timestamp changed,
after anything but a settled check (up-to-date, held, skipped, no release), when the device's own
trusted metadata comes within EXPIRY_MARGIN_S of expiring (so a frozen mirror is still caught by
TUF's expiry), and at least every `full_every_s`.

A 429 or 503 answer's Retry-After is honoured by the schedule (see schedule.py).

The loop never ends on one bad answer, file or disk event: the agent turns what it foresees into
an outcome (unreachable, retry, refused, ...), and anything else a check raises -- a bug, a state
file in a shape nobody expected -- is logged with its traceback ("internal-error" in agent.log) and
taken as a fault: the schedule backs off and the next check tries again.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.device.fetch import Limits, paced
from edgeopt.device.health import count_start
from edgeopt.device.schedule import PollPolicy, RandomSource, Schedule, parse_retry_after

# A trusted metadata file this close to its expiry takes the full refresh, seconds.
EXPIRY_MARGIN_S = 3600.0
# Outcomes after which nothing is pending: an unchanged timestamp means there is nothing to do.
SETTLED = frozenset({"up-to-date", "held", "skipped", "no-release"})
FAULTS = frozenset({"unreachable", "retry", "idle-fault"})
TIMESTAMP_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class LoopConfig:
    policy: PollPolicy = PollPolicy()
    # Seconds between reports while nothing happens (a change is reported at once).
    report_every_s: float = 300.0
    # Seconds between full TUF refreshes even when the timestamp says nothing changed.
    full_every_s: float = 3600.0


class ServerSignals:
    """An httpx response hook: the Retry-After of the last 429/503 answer, and requests counted."""

    def __init__(self) -> None:
        self.retry_after: str | None = None
        self.requests = 0

    def __call__(self, response: Any) -> None:
        self.requests += 1
        if response.status_code in (429, 503):
            self.retry_after = response.headers.get("retry-after")


class IdleCheck:
    """One conditional GET of timestamp.json against the copy the device trusts."""

    def __init__(self, client: Any, base: str, tuf_dir: Path, channel: str, limits: Limits | None = None) -> None:
        self.client, self.url, self.tuf_dir, self.channel = client, f"{base}/metadata/timestamp.json", tuf_dir, channel
        self.limits = limits or Limits()  # the request is held to the deadline and minimum rate of any other fetch
        self.validators: dict[str, str] = {}  # describe the trusted timestamp.json, byte for byte

    def _trusted(self) -> bytes | None:
        try:
            return (self.tuf_dir / "timestamp.json").read_bytes()
        except OSError:
            return None

    def _fresh(self, now: float) -> bool:
        """Every trusted file the device relies on stays unexpired for EXPIRY_MARGIN_S more."""
        for name in ("timestamp", "snapshot", "targets", self.channel):
            try:
                expires = json.loads((self.tuf_dir / f"{name}.json").read_text())["signed"]["expires"]
                when = dt.datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
            except (OSError, ValueError, KeyError, TypeError):
                return False
            if when - now < EXPIRY_MARGIN_S:
                return False
        return True

    def unchanged(self, now: float) -> bool:
        """True when the server's timestamp.json is the trusted one. Raises httpx errors, and
        ConnectionError for an answer other than 200/304 (a fault: the schedule backs off)."""
        trusted = self._trusted()
        if trusted is None or not self._fresh(now):
            return False
        headers = {"Accept-Encoding": "identity"}
        if "etag" in self.validators:
            headers["If-None-Match"] = self.validators["etag"]
        if "last-modified" in self.validators:
            headers["If-Modified-Since"] = self.validators["last-modified"]
        with paced(self.limits, TIMESTAMP_MAX_BYTES, "timestamp.json"), \
                self.client.stream("GET", self.url, headers=headers) as response:
            if response.status_code == 304:
                return bool(self.validators)
            if response.status_code != 200:
                raise ConnectionError(f"timestamp.json: HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > TIMESTAMP_MAX_BYTES:
                    return False  # let TUF judge it
            same = bytes(body) == trusted and "content-encoding" not in response.headers
            self.validators = _validators(response.headers) if same else {}
            return same


def _validators(headers: Any) -> dict[str, str]:
    """The answer's validators that identify its bytes: an ETag, or a Last-Modified at least a
    second older than the answer's Date (a file changed twice within its second would otherwise
    look unchanged: RFC 9110's rule for a strong Last-Modified)."""
    found = {}
    if headers.get("etag") and not headers["etag"].startswith("W/"):
        found["etag"] = headers["etag"]
    modified, date = headers.get("last-modified"), headers.get("date")
    if modified and date:
        import email.utils

        try:
            if email.utils.parsedate_to_datetime(date).timestamp() - email.utils.parsedate_to_datetime(modified).timestamp() >= 1:
                found["last-modified"] = modified
        except (TypeError, ValueError):
            pass
    return found


def run_agent(agent: Any, config: LoopConfig = LoopConfig(), *, clock: Callable[[], float] = time.time,
              sleep: Callable[[float], Any] = time.sleep, rng: RandomSource | None = None,
              stop: Callable[[], bool] = lambda: False, max_checks: int | None = None) -> ServerSignals:
    """Check on the schedule until `stop()` (or max_checks checks); returns the request counter."""
    rng = rng or random.Random()
    schedule = Schedule(config.policy.check())
    signals = ServerSignals()
    agent.client.event_hooks = {**agent.client.event_hooks, "response": [*agent.client.event_hooks.get("response", []), signals]}
    idle = IdleCheck(agent.client, agent.base, agent.state.root / "tuf", agent.config.channel, agent.config.limits)
    count_start(agent.state.root, "agent")
    next_at = schedule.first(clock(), rng)
    last_full = last_report = -math.inf
    settled, checks = False, 0
    while not stop() and (max_checks is None or checks < max_checks):
        wait = next_at - clock()
        if wait > 0:
            sleep(min(wait, 1.0))  # a second at most, so stop() is seen
            continue
        now = clock()
        signals.retry_after = None
        kind = check(agent, idle, settled and now - last_full < config.full_every_s, now)
        checks += 1
        if kind not in ("idle", "idle-fault"):
            last_full, settled = now, kind in SETTLED
        if kind in FAULTS:
            settled = False
            next_at = schedule.after_fault(now, rng, parse_retry_after(signals.retry_after, now))
        else:
            next_at = schedule.after_success(now, rng)
        if clock() - last_report >= config.report_every_s:
            agent.report()
            last_report = clock()
    return signals


def check(agent: Any, idle: IdleCheck, may_idle: bool, now: float) -> str:
    """One check: 'idle' when the conditional request shows nothing changed, else the full check's outcome."""
    if may_idle:
        try:
            if idle.unchanged(now):
                return "idle"
        except Exception as exc:  # any fault of the small request: logged, backed off, never fatal
            agent.state.log("unreachable", error=f"timestamp.json: {type(exc).__name__}: {exc}"[:200])
            return "idle-fault"
    try:
        return str(agent.check_once().kind)
    except Exception:  # a bug must not end the device's updates: logged, then retried with back-off
        agent.state.log("internal-error", error=traceback.format_exc()[-3000:])
        return "retry"
