"""When the agent checks next: polling a fleet can afford.

- Between checks, a jittered interval: each wait is drawn from interval_s x [1 - jitter, 1 + jitter],
  so devices that started together drift apart instead of polling in lockstep.
- After a (re)start, the first check waits a random part of one interval: a fleet restarted at once
  (a power cut, a rollout of the agent itself) does not hit the server in the same second.
- After a fault, exponential backoff with full jitter: the k-th fault in a row waits
  uniform(min_fault_s, min(max_backoff_s, backoff_base_s x 2^k)) -- "full jitter" spreads retries
  over the whole window, so a recovering server is not met by a synchronised wave.
- A server's Retry-After (seconds or an HTTP date, with 429 or 503) is honoured: the wait is at
  least what the server asked, plus up to `jitter` of it again, cut at max_retry_after_s so a
  hostile mirror cannot silence a device for long.

Time-driven and pure: every call takes `now` (seconds) and a random source, so the tests and the
10,000-device simulation of bench/fleet.py drive this very code with a simulated clock.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from typing import Protocol


class RandomSource(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class PollPolicy:
    # Mean seconds between checks while all is well.
    interval_s: float = 30.0
    # Each wait is drawn from interval_s x [1 - jitter, 1 + jitter]; 0: a fixed interval.
    jitter: float = 0.5
    # The first check after a start waits uniform(0, interval_s) (False: at once).
    spread_start: bool = True
    # Backoff after the k-th fault in a row: uniform(min_fault_s, min(max_backoff_s, backoff_base_s x 2^k)).
    backoff_base_s: float = 5.0
    max_backoff_s: float = 600.0
    min_fault_s: float = 1.0
    # Longest Retry-After honoured, seconds.
    max_retry_after_s: float = 3600.0

    def check(self) -> PollPolicy:
        if self.interval_s < 0 or not 0 <= self.jitter < 1:
            raise ValueError("the interval must be >= 0 s and the jitter in [0, 1), e.g. 0.5")
        if not 0 <= self.min_fault_s <= self.max_backoff_s or self.backoff_base_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("backoff: need 0 <= min fault wait <= max backoff, base >= 0, max Retry-After >= 0")
        return self


class Schedule:
    """One agent's poll clock: the faults in a row it has seen, and when to check next."""

    def __init__(self, policy: PollPolicy) -> None:
        self.policy = policy
        self.faults = 0

    def first(self, now: float, rng: RandomSource) -> float:
        """When to check first after a start."""
        return now + (rng.uniform(0.0, self.policy.interval_s) if self.policy.spread_start else 0.0)

    def after_success(self, now: float, rng: RandomSource) -> float:
        """When to check next after a check that completed (whatever it found)."""
        self.faults = 0
        p = self.policy
        return now + p.interval_s * rng.uniform(1.0 - p.jitter, 1.0 + p.jitter)

    def after_fault(self, now: float, rng: RandomSource, retry_after_s: float | None = None) -> float:
        """When to check next after a fault (unreachable, an error answer, a transfer that failed)."""
        p = self.policy
        ceiling = min(p.max_backoff_s, p.backoff_base_s * 2.0 ** min(self.faults, 60))
        self.faults += 1
        wait = rng.uniform(p.min_fault_s, max(p.min_fault_s, ceiling))
        if retry_after_s is not None:
            asked = min(max(retry_after_s, 0.0), p.max_retry_after_s)
            wait = max(wait, asked * rng.uniform(1.0, 1.0 + p.jitter))
        return now + wait


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date, against `now`), or None
    for anything else. Whatever a hostile server sends, this returns or gives None: ten ASCII digits
    at most (a longer number is cut at the policy's cap anyway), never int() of an unbounded string."""
    if value is None or len(value) > 64:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,10}", value):
        return float(value)
    if value.isascii() and value.isdigit():  # more than ten digits: longer than any cap
        return float("inf")
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
