"""The staged rollout's policy, pure: buckets, promotion, halts -- driven by a simulated clock."""

from __future__ import annotations

import pytest

from edgeopt.rollout.policy import (
    PPM,
    Criteria,
    Evidence,
    RolloutState,
    Window,
    bucket_ppm,
    decide,
    evidence_from,
    in_share,
    parse_stages,
)

NEW, OLD = "a" * 64, "b" * 64
STAGES = (10_000, 50_000, 250_000, PPM)


def state(**changes) -> RolloutState:
    base = RolloutState(channel="stable", release=2, model_sha256=NEW, stages_ppm=STAGES, soak_s=(60.0,) * 4,
                        criteria=Criteria(min_reports=5, min_frames=50), started=0.0, stage_started=0.0,
                        previous_release=1, previous_sha256=OLD, previous_version=3)
    return RolloutState(**{**base.__dict__, **changes})


def window(confidence: float = 0.9, frames: int = 100, p90: float = 5.0, low: float = 0.05) -> Window:
    return Window(frames, p90 / 2, p90, confidence, low)


def devices_in(share_ppm: int, count: int, outside: bool = False) -> list[str]:
    """`count` device ids inside (or outside) the share of NEW."""
    found, i = [], 0
    while len(found) < count:
        name = f"dev-{i}"
        if in_share(name, NEW, share_ppm) != outside:
            found.append(name)
        i += 1
    return found


def running(name: str, new: Window | None = None, old: Window | None = None, outcome: str = "activated",
            reported_at: float = 0.0) -> Evidence:
    """A device of the stage: release 2 (NEW) installed, or its install failed and release 1 still runs."""
    windows = {2: new or window(), 1: old or window()}
    if outcome == "activated":
        return Evidence(name, reported_at, 2, (2, outcome), windows, active_sha256=NEW, previous_release=1)
    return Evidence(name, reported_at, 1, (2, outcome), windows, active_sha256=OLD, previous_release=None)


def test_buckets_are_stable_nested_and_drawn_afresh_for_each_release():
    ids = [f"sorter-{i}" for i in range(10_000)]
    assert [bucket_ppm(d, NEW) for d in ids[:50]] == [bucket_ppm(d, NEW) for d in ids[:50]]
    at_5 = {d for d in ids if in_share(d, NEW, 50_000)}
    at_25 = {d for d in ids if in_share(d, NEW, 250_000)}
    assert at_5 <= at_25  # a device in a stage stays in every later one
    assert 400 <= len(at_5) <= 600 and 2300 <= len(at_25) <= 2700  # 5 % and 25 % of 10,000, binomial margin ~5 sd
    other_release = {d for d in ids if in_share(d, OLD, 50_000)}
    assert len(at_5 & other_release) < 100  # another release starts with other devices (expected ~25)
    assert all(in_share(d, NEW, PPM) for d in ids[:100])


@pytest.mark.parametrize("text, stages", [("1,5,25,100", STAGES), ("0.5,100", (5_000, PPM)), ("100", (PPM,))])
def test_stages_parse_from_percentages(text, stages):
    assert parse_stages(text) == stages


@pytest.mark.parametrize("text", ["5,1,100", "1,5,25", "0,100", "1,x,100", ""])
def test_bad_stages_are_refused_with_an_example(text):
    with pytest.raises(ValueError, match="e.g. 1,5,25,100"):
        parse_stages(text)


def test_a_stage_soaks_then_promotes_when_its_devices_run_healthy():
    s = state(stage=1)
    evidence = [running(d) for d in devices_in(50_000, 10)]
    assert decide(s, evidence, now=30.0).action == "wait"  # soaking: 30 s of 60
    decision = decide(s, evidence, now=61.0)
    assert decision.action == "promote", decision.reason
    assert decision.stats.healthy == 10


def test_a_stage_waits_for_enough_in_service_frames():
    s = state(stage=1)
    evidence = [running(d, new=window(frames=10)) for d in devices_in(50_000, 10)]
    decision = decide(s, evidence, now=1000.0)
    assert decision.action == "wait" and "0 of 10 devices" in decision.reason


def test_failures_above_the_rate_halt_the_rollout():
    s = state(stage=1)
    names = devices_in(50_000, 10)
    evidence = [running(d, outcome="smoke-test-failed" if i < 3 else "activated") for i, d in enumerate(names)]
    decision = decide(s, evidence, now=1.0)  # a breach halts at once, soak or not
    assert decision.action == "halt"
    assert "3 of 10 devices" in decision.reason and "30%" in decision.reason
    assert decision.stats.failed_devices == tuple(sorted(names[:3]))


def test_a_failure_rate_needs_min_reports_or_the_whole_stage():
    s = state(stage=2)
    names = devices_in(250_000, 3)
    evidence = [running(names[0], outcome="smoke-test-failed"), running(names[1])]
    # two reports of a stage with more known devices: fewer than min_reports (5), no verdict yet
    others = [Evidence(d, 0.0, 1) for d in devices_in(250_000, 8)[3:]]
    assert decide(s, evidence + others, now=1.0).action == "wait"
    # a stage of just two devices: both reported, one failed -> halt
    assert decide(s, evidence, now=1.0).action == "halt"


def test_confidence_falling_against_the_same_devices_model_before_halts():
    s = state(stage=1)
    names = devices_in(50_000, 6)
    evidence = [running(d, new=window(0.55), old=window(0.90)) for d in names]
    decision = decide(s, evidence, now=1.0)
    assert decision.action == "halt"
    assert "confidence" in decision.reason and "0.350" in decision.reason
    # the same low confidence on devices whose model before was just as unsure is no regression
    steady = [running(d, new=window(0.55), old=window(0.56)) for d in names]
    assert decide(s, steady, now=1.0).action != "halt"


@pytest.mark.parametrize("new, reason", [(window(p90=12.0), "p90 latency"), (window(low=0.4), "low-confidence")])
def test_latency_and_low_confidence_regressions_halt(new, reason):
    s = state(stage=1)
    evidence = [running(d, new=new, old=window()) for d in devices_in(50_000, 6)]
    decision = decide(s, evidence, now=1.0)
    assert decision.action == "halt" and reason in decision.reason


def test_devices_outside_the_share_do_not_count_and_paused_waits_but_still_halts():
    s = state(stage=1, status="paused")
    healthy = [running(d) for d in devices_in(50_000, 10)]
    outside = [Evidence(d, 0.0, 1) for d in devices_in(50_000, 50, outside=True)]
    decision = decide(s, healthy + outside, now=1000.0)
    assert decision.action == "wait" and "paused" in decision.reason and decision.stats.population == 10
    failing = [running(d, outcome="rolled-back") for d in devices_in(50_000, 10)]
    assert decide(s, failing, now=1000.0).action == "halt"


def test_the_last_stage_completes_and_a_finished_rollout_does_nothing():
    s = state(stage=3)
    evidence = [running(d) for d in devices_in(PPM, 20)]
    assert decide(s, evidence, now=61.0).action == "complete"
    assert decide(state(status="halted"), evidence, now=61.0).action == "wait"


def test_min_frames_zero_promotes_on_installs_alone():
    s = state(criteria=Criteria(min_frames=0))
    names = devices_in(10_000, 3)
    evidence = [Evidence(d, 0.0, 2, (2, "activated"), active_sha256=NEW, previous_release=1) for d in names]
    assert decide(s, evidence, now=61.0).action == "promote"


def test_failed_downloads_do_not_count_against_the_release():
    s = state(stage=1)
    evidence = [Evidence(d, 0.0, 1, (2, "download-failed")) for d in devices_in(50_000, 10)]
    decision = decide(s, evidence, now=1.0)
    assert decision.action == "wait" and decision.stats.attempted == 0


def test_reports_become_evidence_and_windows_without_figures_are_ignored():
    from edgeopt.fleet.report import DeviceReport, InstallOutcome, ServiceWindow

    service = ServiceWindow(release=2, start="2026-12-01T10:00:00Z", end="2026-12-01T10:05:00Z", frames=80,
                            latency_p50_ms=2.0, latency_p90_ms=3.0, mean_confidence=0.8, low_confidence_share=0.1)
    empty = ServiceWindow(release=1, start="2026-12-01T09:00:00Z", end="2026-12-01T09:00:00Z", frames=0)
    report = DeviceReport(device_id="sorter-1", channel="stable", active_release=2, previous_release=1,
                          install=InstallOutcome(release=2, result="activated", smoke_test="passed", time="2026-12-01T09:59:00Z"),
                          service=service, previous_service=empty)
    e = evidence_from(report.model_dump(), 5.0)
    assert e.install == (2, "activated") and e.outcome(2) == "activated" and e.outcome(1) is None
    assert set(e.windows) == {2} and e.windows[2].frames == 80 and e.windows[2].mean_confidence == 0.8
    old = evidence_from(DeviceReport(device_id="old-agent", channel="stable").model_dump(), 5.0)
    assert old.install is None and not old.windows and old.active_release is None


def test_state_round_trips_through_json():
    import json

    s = state(stage=2).moved(10.0, "promoted", "why")
    assert RolloutState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# --- evidence a verdict may rest on (hostile review, findings 1 and 5) ---------------------------------------------


def test_a_stage_without_evidence_never_promotes_and_says_why():
    """No device reported (endpoint down, clocks off, a mistyped --db, or none of the known devices in the
    stage): the stage waits however long it soaked, instead of walking to 100 % on "0 of 0 healthy"."""
    s = state(stage_started=100.0)
    outside = devices_in(10_000, 30, outside=True)
    before_the_stage = [Evidence(d, 50.0, 1, active_sha256=OLD, previous_release=1) for d in outside]
    four_since = [Evidence(d, 150.0, 1, active_sha256=OLD, previous_release=1) for d in outside[:4]]
    for evidence in ([], before_the_stage, four_since):  # nobody; nobody since the stage began; fewer than min_reports
        decision = decide(s, evidence, now=10_000.0)
        assert decision.action == "wait" and "no device of this stage has reported" in decision.reason, decision.reason
    # reports do arrive (5 devices since the stage began), and the stage -- 1 % of a small fleet -- holds none of them
    since = [Evidence(d, 150.0, 1, active_sha256=OLD, previous_release=1) for d in outside[:5]]
    decision = decide(s, since, now=10_000.0)
    assert decision.action == "promote" and "holding none of the 5 devices" in decision.reason, decision.reason
    last = state(stage=3, stage_started=100.0)  # the last stage holds every device: an empty one is no evidence
    assert decide(last, [], now=10_000.0).action == "wait" and decide(last, since, now=10_000.0).action != "complete"
    # a fleet whose devices do not report says so explicitly
    allowed = state(criteria=Criteria(allow_empty_stage=True))
    assert decide(allowed, [], now=30.0).action == "wait"  # still soaks
    assert decide(allowed, [], now=61.0).action == "promote"


def test_a_stage_smaller_than_min_reports_needs_all_its_devices_reporting_since_it_began():
    s = state(stage=1, stage_started=100.0)
    names = devices_in(50_000, 2)
    before = [running(d, reported_at=50.0) for d in names]  # healthy, but last heard of before this stage began
    decision = decide(s, before, now=1000.0)
    assert decision.action == "wait" and "0 of 2 have" in decision.reason, decision.reason
    assert decide(s, [running(names[0], reported_at=150.0), before[1]], now=1000.0).action == "wait"
    assert decide(s, [running(d, reported_at=150.0) for d in names], now=1000.0).action == "promote"


def test_claims_from_devices_outside_the_share_do_not_count():
    """The server places a device in the stage from the signed rollout's model hash and its id: a device
    outside the share cannot halt a rollout by claiming a failed install, nor pass one by claiming to run it."""
    s = state()
    honest = [running(d) for d in devices_in(10_000, 6)]
    liar = devices_in(10_000, 1, outside=True)[0]
    failing = Evidence(liar, 0.0, 1, (2, "smoke-test-failed"), active_sha256=OLD, previous_release=1)
    decision = decide(s, [*honest, failing], now=61.0)
    assert decision.action == "promote" and decision.stats.population == 6 and decision.stats.failed == 0
    crowd = [Evidence(d, 0.0, 2, (2, "activated"), {2: window(), 1: window()}, NEW, 1) for d in devices_in(10_000, 50, outside=True)]
    assert decide(s, crowd, now=61.0).stats.population == 0
    # a device that had no model at all installs any share above 0: its evidence counts
    fresh = Evidence(liar, 0.0, None, (2, "smoke-test-failed"), previous_release=None)
    assert decide(s, [*honest, fresh], now=61.0).stats.failed == 1


def test_a_device_runs_the_release_only_when_it_reports_the_releases_model_hash():
    s = state()
    names = devices_in(10_000, 6)
    claims = [Evidence(d, 0.0, 2, (2, "activated"), {2: window(), 1: window()}, active_sha256=OLD, previous_release=1)
              for d in names]
    decision = decide(s, claims, now=61.0)
    assert decision.action == "wait" and decision.stats.running == 0 and decision.stats.healthy == 0


def test_one_device_of_the_stage_can_neither_mask_an_in_service_regression_nor_fake_one():
    """The paired changes are medians over the stage's devices, not means."""
    s = state(stage=1)
    names = devices_in(50_000, 6)
    # five devices whose confidence fell 0.30, and one device of the stage that claims a huge gain
    worse = [running(d, new=window(0.60, low=0.30), old=window(0.90)) for d in names[:5]]
    masking = running(names[5], new=window(1.0, low=0.0), old=window(0.0, low=1.0))
    decision = decide(s, [*worse, masking], now=1.0)
    assert decision.action == "halt" and "fell by 0.300 (median)" in decision.reason, decision.reason
    # and one device claiming a collapse among healthy ones does not halt
    fine = [running(d) for d in names[:5]]
    collapse = running(names[5], new=window(0.0, low=1.0), old=window(1.0, low=0.0))
    assert decide(s, [*fine, collapse], now=1.0).action != "halt"


@pytest.mark.parametrize("text", ["1e400,100", "nan,100", "1,inf", "-inf,100"])
def test_stages_that_are_not_finite_numbers_are_refused(text):
    with pytest.raises(ValueError, match="e.g. 1,5,25,100"):
        parse_stages(text)


@pytest.mark.parametrize("field", ["max_failure_rate", "max_confidence_drop", "max_low_confidence_rise",
                                   "max_latency_ratio", "promote_share"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_criteria_that_are_not_finite_numbers_are_refused(field, value):
    with pytest.raises(ValueError, match="finite numbers"):
        Criteria(**{field: value}).check()
