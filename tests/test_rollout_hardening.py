"""Staged rollouts against what a hostile review found (docs/rollout.md): no evidence never promotes,
a halt never brings back a withdrawn release and survives a pruned model, a stale mirror's pre-halt
metadata expires within the short timestamp's lifetime, an interrupted start or a repeated abort is
harmless, `rollout watch --loop` outlives a database outage, and bad numbers are one line, exit 2."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

import edgeopt.release.repository as repository_module
import edgeopt.rollout.signing as signing_module
from edgeopt.cli import main
from edgeopt.errors import ConfigError
from edgeopt.methods.base import sha256_of
from edgeopt.rollout import signing
from edgeopt.rollout.control import Rollouts, fleet_evidence, keep_watching
from edgeopt.rollout.policy import PPM, Criteria, signed_share_ppm
from tests.delivery_helpers import StaticServer
from tests.rollout_helpers import write_release
from tests.test_rollout import Fleet, active_sha, pick

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def fleet(tmp_path):
    return Fleet(tmp_path)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def timestamp_left(fleet: Fleet) -> dt.timedelta:
    return fleet.repo.load("timestamp").signed.expires - dt.datetime.now(dt.UTC)


def test_watch_without_any_report_waits_and_a_mistyped_database_is_refused(fleet, capsys):
    fleet.start("good", 1, stages=(10_000, 50_000, PPM))
    for _ in range(3):  # cron, minute after minute: the stage soaked (0 s), but nobody reported
        code, out, err = run(capsys, "rollout", "watch", "--repo", fleet.repo_path, "--keys", fleet.keys)
        assert code == 0 and "stable release 2: wait" in out and "no device of this stage has reported" in out, out + err
    assert signed_share_ppm(fleet.repo.current_release("stable")) == 10_000
    assert not (fleet.repo_path / "fleet" / "fleet.db").exists()  # reading created no database
    typo = fleet.tmp / "flet.db"
    for command in (("rollout", "watch", "--keys", fleet.keys), ("rollout", "status"), ("fleet", "show")):
        code, _, err = run(capsys, *command, "--repo", fleet.repo_path, "--db", typo)
        assert code == 2 and "flet.db does not exist; check --db" in err and len(err.strip().splitlines()) == 1, err
    assert not typo.exists()


def test_evidence_comes_only_from_enrolled_unrevoked_devices(fleet):
    from edgeopt.fleet.report import DeviceReport, InstallOutcome
    from edgeopt.fleet.store import open_store

    now = dt.datetime.now(dt.UTC)
    failed = InstallOutcome(release=2, result="smoke-test-failed", time="2026-12-04T00:00:00Z")
    with open_store(fleet.repo_path) as store:
        for name in ("sorter-1", "liar"):
            store.enroll(name, bytes([len(name)]) * 32, now)
            store.record_report(DeviceReport(device_id=name, channel="stable", active_release=1, install=failed), now)
        store.revoke("liar", now)
    assert [e.device_id for e in fleet_evidence(fleet.repo_path, "stable")] == ["sorter-1"]


def test_a_halt_after_a_withdrawn_first_release_withdraws_again_instead_of_bringing_it_back(tmp_path):
    from edgeopt.release.keys import generate_keys
    from edgeopt.release.repository import Repository

    keys = tmp_path / "keys"
    generate_keys(keys, ("stable",))
    repo = Repository(tmp_path / "repo")
    repo.init(keys, ("stable",))
    rollouts = Rollouts(repo.path)
    broken = write_release(tmp_path / "m", "nan", 0)
    rollouts.start(keys, "stable", *broken, (10_000, PPM), (0.0,), Criteria(), now=1000.0)
    assert "withdrawn (share 0)" in rollouts.abort(keys, "stable", 1001.0, "NaN on bright frames").reason
    state = rollouts.start(keys, "stable", *write_release(tmp_path / "m", "good", 2), (10_000, PPM), (0.0,), Criteria(), now=2000.0)
    assert state.previous_release is None and state.previous_version is None
    state = rollouts.abort(keys, "stable", 2001.0, "changed my mind")
    assert "withdrawn (share 0)" in state.reason and "published again" not in state.reason
    current = repo.current_release("stable")
    assert current["release"] == 2 and signed_share_ppm(current) == 0  # release 1 (the NaN model) is not back at 100 %


def test_a_halt_whose_previous_model_was_pruned_withdraws_the_release_and_says_what_to_do(fleet):
    fleet.start("nan", 1, stages=(250_000, PPM))
    state = fleet.rollouts.state("stable")
    before, _, _ = signing.channel_model(fleet.repo, "stable", state.previous_version)
    (fleet.repo_path / "targets" / "stable" / f"{before.hashes['sha256']}.model").unlink()
    halted = fleet.rollouts.abort(fleet.keys, "stable", 2000.0, "bad")
    assert halted.status == "aborted"
    assert "is gone, so release 1 cannot be published again" in halted.reason and "withdrawn instead (share 0)" in halted.reason
    assert "edgeopt publish RUN" in halted.reason
    current = fleet.repo.current_release("stable")
    assert current["release"] == 2 and signed_share_ppm(current) == 0  # the bad release spreads no further


def test_while_a_rollout_runs_the_timestamp_is_short_lived_and_watch_renews_it(fleet, monkeypatch):
    assert timestamp_left(fleet) > 20 * HOUR  # without a rollout: a day
    fleet.start("good", 1)
    assert 1.9 * HOUR < timestamp_left(fleet) <= 2 * HOUR
    version = fleet.repo.load("timestamp").signed.version
    fleet.rollouts.watch(fleet.keys, "stable", [], now=1001.0)
    assert fleet.repo.load("timestamp").signed.version == version  # more than 75 min of its 2 h left: kept
    renewed, _ = fleet.repo.refresh(fleet.keys)  # the daily `edgeopt refresh` keeps it short too
    assert "timestamp" in renewed and timestamp_left(fleet) <= 2 * HOUR
    later = dt.datetime.now(dt.UTC).replace(microsecond=0) + 0.85 * HOUR  # the release machine's clock, 51 min on: 69 min left
    for module in (repository_module, signing_module):
        monkeypatch.setattr(module, "_now", lambda: later)
    version = fleet.repo.load("timestamp").signed.version
    fleet.rollouts.watch(fleet.keys, "stable", [], now=1001.0 + 3060)
    timestamp = fleet.repo.load("timestamp").signed
    assert timestamp.version == version + 1 and timestamp.expires == later + 2 * HOUR
    monkeypatch.undo()
    fleet.rollouts.abort(fleet.keys, "stable", now=9000.0)
    assert timestamp_left(fleet) > 20 * HOUR  # the rollout stopped: back to a day, nobody has to renew it hourly


def test_a_stale_mirror_cannot_deliver_a_halted_release_after_the_short_timestamp_expired(fleet, monkeypatch):
    new = sha256_of(write_release(fleet.tmp / "peek", "nan", 1)[0])
    device = pick(new, 10_000, True)[0]
    with StaticServer(fleet.repo_path) as server:
        assert str(fleet.agent(server.url, device).check_once()) == "activated release 1"
    real = repository_module._now
    for module in (repository_module, signing_module):  # the rollout started three hours ago...
        monkeypatch.setattr(module, "_now", lambda: real() - 3 * HOUR)
    fleet.start("nan", 1)
    mirror = fleet.tmp / "mirror"
    shutil.copytree(fleet.repo_path, mirror)  # ...when a mirror copied what it serves from then on
    monkeypatch.undo()
    fleet.rollouts.abort(fleet.keys, "stable", 2000.0, "bad release")
    with StaticServer(mirror) as stale:  # the device was offline and comes back through the stale mirror
        agent = fleet.agent(stale.url, device)
        outcome = agent.check_once()
    assert outcome.kind != "activated" and "expired" in str(outcome), str(outcome)
    assert active_sha(agent) == fleet.good_sha


def test_an_interrupted_start_is_completed_and_start_and_abort_can_be_repeated(fleet, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after signing, before the rollout's state is written

    monkeypatch.setattr(Rollouts, "_save", killed)
    with pytest.raises(KeyboardInterrupt):
        fleet.start("good", 1)
    monkeypatch.undo()
    assert fleet.repo.current_release("stable")["release"] == 2 and fleet.rollouts.state("stable").status == "starting"
    state, decision = fleet.rollouts.watch(fleet.keys, "stable", [], now=1001.0)  # cron's next pass settles it
    assert state.status == "running" and state.release == 2 and decision.action == "wait"
    assert fleet.start("good", 1) and fleet.rollouts.state("stable").release == 2  # the same start again: nothing new
    assert fleet.repo.current_release("stable")["release"] == 2
    first = fleet.rollouts.abort(fleet.keys, "stable", now=2000.0)
    again = fleet.rollouts.abort(fleet.keys, "stable", now=2001.0)
    assert first.status == again.status == "aborted" and again.history == first.history
    assert fleet.repo.current_release("stable")["release"] == 3  # one publish of the model before, not two


def test_a_start_that_fails_before_signing_leaves_nothing_behind(fleet, monkeypatch):
    def broken(*args, **kwargs):
        raise ConfigError("no channel key in keys")

    monkeypatch.setattr(fleet.repo.__class__, "publish_release", broken)
    with pytest.raises(ConfigError):
        fleet.start("good", 1)
    monkeypatch.undo()
    assert fleet.rollouts.state("stable") is None and timestamp_left(fleet) > 20 * HOUR
    fleet.start("good", 1)
    assert fleet.rollouts.state("stable").status == "running"


def test_watch_loop_logs_a_failed_pass_and_retries_with_backoff():
    passes, waits, lines = [], [], []
    outcomes = iter([None, "db down", "db down", None, "db down", None])

    def one_pass():
        passes.append(1)
        problem = next(outcomes)
        if problem:
            raise ConfigError(f"the fleet database is unavailable: {problem}")

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == 5:
            raise SystemExit  # end the test's loop

    with pytest.raises(SystemExit):
        keep_watching(one_pass, 60.0, sleep, lines.append)
    # ok, 60 s, failed, 120 s, failed, 240 s, ok, 60 s, failed, 120 s
    assert len(passes) == 5 and waits == [60.0, 120.0, 240.0, 60.0, 120.0]
    assert lines == ["watch pass failed (1 in a row): the fleet database is unavailable: db down; next try in 120 s",
                     "watch pass failed (2 in a row): the fleet database is unavailable: db down; next try in 240 s",
                     "watch pass failed (1 in a row): the fleet database is unavailable: db down; next try in 120 s"]

    def bad_argument():
        raise ConfigError("the fleet database x.db does not exist; check --db")

    with pytest.raises(ConfigError):  # the first pass failing is a mistake of the command line: said at once
        keep_watching(bad_argument, 60.0, sleep, lines.append)


@pytest.mark.parametrize("option, fragment", [
    (("--stages", "1e400,100"), "must be percentages"), (("--stages", "nan,100"), "must be percentages"),
    (("--max-latency-ratio", "nan"), "finite numbers"), (("--max-confidence-drop", "inf"), "finite numbers"),
    (("--soak", "9" * 400), "--soak"), (("--timestamp-expiry", "1m"), "--timestamp-expiry must be between"),
])
def test_numbers_that_are_not_finite_or_out_of_range_are_one_line(fleet, capsys, option, fragment):
    code, _, err = run(capsys, "rollout", "start", fleet.tmp, "--repo", fleet.repo_path, "--keys", fleet.keys, *option)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (fleet.repo_path / "rollouts" / "stable.json").exists()

