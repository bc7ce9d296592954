"""The agent's poll schedule with a simulated clock: jitter, restart spread, backoff, Retry-After."""

from __future__ import annotations

import collections
import email.utils
import random

import pytest

from edgeopt.device.schedule import PollPolicy, Schedule, parse_retry_after


def peak_per_second(times: list[float]) -> int:
    return max(collections.Counter(int(t) for t in times).values())


def test_a_restarted_fleet_spreads_its_first_checks_and_stays_spread():
    rng = random.Random(1)
    devices = 10_000
    jittered = [Schedule(PollPolicy(interval_s=60.0)) for _ in range(devices)]
    lockstep = [Schedule(PollPolicy(interval_s=60.0, jitter=0.0, spread_start=False)) for _ in range(devices)]
    for schedules in (jittered, lockstep):
        times = [s.first(0.0, rng) for s in schedules]
        for _ in range(5):  # five more checks each
            times += [s.after_success(t, rng) for s, t in zip(schedules, times[-devices:], strict=True)]
        if schedules is lockstep:
            assert peak_per_second(times) == devices  # everyone in the same second, every minute
        else:
            # ~167 checks a second on average; uniform spreading keeps the peak within a small multiple
            assert peak_per_second(times) < 400


def test_waits_between_checks_stay_within_the_jitter():
    rng = random.Random(2)
    schedule = Schedule(PollPolicy(interval_s=30.0, jitter=0.5))
    waits = [schedule.after_success(100.0, rng) - 100.0 for _ in range(2000)]
    assert 15.0 <= min(waits) and max(waits) <= 45.0
    assert max(waits) - min(waits) > 25.0  # drawn over the whole range, not a fixed interval


def test_backoff_doubles_with_full_jitter_up_to_the_cap_and_resets_on_success():
    rng = random.Random(3)
    policy = PollPolicy(backoff_base_s=5.0, max_backoff_s=300.0, min_fault_s=1.0)
    ceilings = [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    for k, ceiling in enumerate(ceilings):
        draws = []
        for _ in range(300):
            schedule = Schedule(policy)
            schedule.faults = k
            draws.append(schedule.after_fault(0.0, rng))
        assert 1.0 <= min(draws) and max(draws) <= ceiling
        assert min(draws) < 0.25 * ceiling + 1 and max(draws) > 0.75 * ceiling  # the whole window: full jitter
    schedule = Schedule(policy)
    for _ in range(10):
        schedule.after_fault(0.0, rng)
    assert schedule.faults == 10
    schedule.after_success(0.0, rng)
    assert schedule.faults == 0


def test_retry_after_is_honoured_with_jitter_and_capped():
    rng = random.Random(4)
    policy = PollPolicy(jitter=0.5, backoff_base_s=5.0, max_retry_after_s=900.0)
    waits = [Schedule(policy).after_fault(0.0, rng, retry_after_s=120.0) for _ in range(500)]
    assert min(waits) >= 120.0 and max(waits) <= 180.0 and max(waits) - min(waits) > 40.0
    hostile = [Schedule(policy).after_fault(0.0, rng, retry_after_s=10 * 86400.0) for _ in range(50)]
    assert max(hostile) <= 900.0 * 1.5  # a mirror cannot silence a device for days


@pytest.mark.parametrize("value, seconds", [("120", 120.0), (" 0 ", 0.0), ("soon", None), (None, None), ("-5", None)])
def test_retry_after_seconds(value, seconds):
    assert parse_retry_after(value, now=1_000_000.0) == seconds


def test_retry_after_http_date_against_now():
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == pytest.approx(90.0)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0
