"""`edgeopt rollout ...`: staged rollouts of a channel's release (see docs/rollout.md)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeopt.console import err_console, out_console
from edgeopt.errors import ConfigError

if TYPE_CHECKING:
    from edgeopt.rollout.control import Rollouts

rollout_app = typer.Typer(help="Staged rollouts: a release reaches 1, 5, 25, 100 % of devices, promoted or halted by their health.",
                          no_args_is_help=True, rich_markup_mode=None)

RepoOption = Annotated[Path, typer.Option(help="Release repository folder")]
KeysOption = Annotated[Path, typer.Option(help="The folder made by 'edgeopt keys generate' (channel, snapshot, timestamp keys)")]
ChannelOption = Annotated[str, typer.Option(help="Release channel")]
DbOption = Annotated[str | None, typer.Option(
    help="Fleet database URL (postgresql+psycopg://user@host/db) or SQLite file [default: REPO/fleet/fleet.db]")]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_durations(text: str, option: str = "--soak") -> tuple[float, ...]:
    """'3600', '30m' or '10m,1h,1h,0' -> seconds."""
    values = []
    for part in text.split(","):
        match = _DURATION.match(part)
        value = float(match.group(1)) * _UNITS[match.group(2)] if match else math.inf
        if not math.isfinite(value) or value > 10 * 365 * 86400:
            raise ConfigError(f"{option} {text!r}: give seconds or 30m / 2h / 1d (up to 10 years)"
                              + (", one for all stages or one per stage, e.g. 10m,1h,1h,0" if option == "--soak" else ""))
        values.append(value)
    return tuple(values)


@rollout_app.command("start")
def rollout_start(
    run_dir: Annotated[Path, typer.Argument(help="Folder written by 'edgeopt optimize'")],
    repo: RepoOption,
    keys: KeysOption,
    channel: ChannelOption = "stable",
    variant: Annotated[str | None, typer.Option(help="Roll out this variant instead of the selected one")] = None,
    stages: Annotated[str, typer.Option(help="Shares of devices, percent, ending at 100")] = "1,5,25,100",
    soak: Annotated[str, typer.Option(help="Soak per stage before promotion: one time for all or one per stage (s, m, h, d)")] = "1h",
    max_failure_rate: Annotated[float, typer.Option(help="Halt when more installs/smoke tests fail than this share")] = 0.10,
    min_reports: Annotated[int, typer.Option(help="Devices a verdict needs (the whole stage when fewer)")] = 5,
    min_frames: Annotated[int, typer.Option(help="In-service frames before a device's health counts; 0: installs alone")] = 50,
    max_confidence_drop: Annotated[float, typer.Option(help="Halt when mean top-1 confidence falls more than this")] = 0.10,
    max_low_confidence_rise: Annotated[float, typer.Option(help="Halt when the low-confidence share rises more")] = 0.15,
    max_latency_ratio: Annotated[float, typer.Option(help="Halt when in-service p90 latency grows past this multiple")] = 1.5,
    promote_share: Annotated[float, typer.Option(help="Share of a stage's devices that must run it healthy")] = 0.9,
    allow_empty_stage: Annotated[bool, typer.Option(
        help="Promote a stage none of whose devices reported once it soaked (devices that do not report)")] = False,
    timestamp_expiry: Annotated[str, typer.Option(
        help="Lifetime of the repository's timestamp while the rollout runs: how long a stale mirror can still serve "
             "metadata from before a halt; 'rollout watch' must run more often than half of it")] = "2h",
) -> None:
    """Publish the run's model as the channel's next release, to the first stage's devices only."""
    from edgeopt.release.repository import release_custom
    from edgeopt.rollout.control import Rollouts, check_timestamp_expiry, describe
    from edgeopt.rollout.policy import Criteria, parse_stages

    try:
        shares = parse_stages(stages)
        criteria = Criteria(max_failure_rate, min_reports, min_frames, max_confidence_drop, max_low_confidence_rise,
                            max_latency_ratio, promote_share, allow_empty_stage).check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    soak_s = parse_durations(soak)
    expiry_s = parse_durations(timestamp_expiry, "--timestamp-expiry")
    if len(expiry_s) != 1:
        raise ConfigError(f"--timestamp-expiry {timestamp_expiry!r}: give one time, e.g. 2h")
    check_timestamp_expiry(expiry_s[0])
    model, labels, custom = release_custom(run_dir, variant)
    state = Rollouts(repo).start(keys, channel, model, labels, custom, shares, soak_s, criteria, time.time(), expiry_s[0])
    out_console.print(describe(state), highlight=False, markup=False)
    out_console.print(f"run 'edgeopt rollout watch --repo {repo} --keys {keys}' from cron (or with --loop) to promote it",
                      highlight=False, markup=False)


@rollout_app.command("status")
def rollout_status(
    repo: RepoOption,
    channel: Annotated[str | None, typer.Option(help="Only this channel [default: every channel with a rollout]")] = None,
    db: DbOption = None,
) -> None:
    """Each rollout's stage, its devices' figures, and its history."""
    from edgeopt.rollout.control import Rollouts, describe, fleet_evidence
    from edgeopt.rollout.policy import decide

    rollouts = Rollouts(repo)
    states = [s for s in rollouts.states() if channel in (None, s.channel)]
    if not states:
        out_console.print(f"no rollout{' on ' + channel if channel else ''} in {repo}")
        return
    now = time.time()
    for state in states:
        out_console.print(describe(state), highlight=False, markup=False)
        decision = decide(state, fleet_evidence(repo, state.channel, db), now)
        if decision.stats is not None:
            s = decision.stats
            deltas = ", ".join(f"{name} {value:+.3f}" if name != "p90 latency x" else f"{name}{value:.2f}"
                               for name, value in (("confidence", -s.confidence_drop if s.confidence_drop is not None else None),
                                                   ("low-confidence share", s.low_confidence_rise),
                                                   ("p90 latency x", s.latency_ratio)) if value is not None)
            out_console.print(f"  stage devices {s.population}: {s.attempted} tried, {s.failed} failed, {s.running} run it, "
                              f"{s.healthy} healthy; {s.paired} paired with their model before"
                              + (f" ({deltas})" if deltas else ""), highlight=False, markup=False)
            out_console.print(f"  next: {decision.action} ({decision.reason})", highlight=False, markup=False)
        for event in state.history[-8:]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["time"]))
            out_console.print(f"  {when} {event['event']}: {event['reason']}", highlight=False, markup=False)


@rollout_app.command("pause")
def rollout_pause(repo: RepoOption, channel: ChannelOption = "stable",
                  reason: Annotated[str, typer.Option(help="Why, for the log")] = "") -> None:
    """Hold the rollout at its stage (a breach of the criteria still halts it)."""
    from edgeopt.rollout.control import Rollouts, describe

    out_console.print(describe(Rollouts(repo).pause(channel, time.time(), reason)), highlight=False, markup=False)


@rollout_app.command("resume")
def rollout_resume(repo: RepoOption, channel: ChannelOption = "stable") -> None:
    """Let a paused rollout be promoted again."""
    from edgeopt.rollout.control import Rollouts, describe

    out_console.print(describe(Rollouts(repo).resume(channel, time.time())), highlight=False, markup=False)


@rollout_app.command("abort")
def rollout_abort(repo: RepoOption, keys: KeysOption, channel: ChannelOption = "stable",
                  reason: Annotated[str, typer.Option(help="Why, for the log")] = "") -> None:
    """Stop the rollout and publish the release before it again (under a new release number)."""
    from edgeopt.rollout.control import STOPPED, Rollouts, describe

    rollouts = Rollouts(repo)
    before = rollouts.state(channel)
    state = rollouts.abort(keys, channel, time.time(), reason)
    stopped = before is not None and before.status in STOPPED and before.history == state.history
    out_console.print(("already stopped, nothing done: " if stopped else "") + describe(state), highlight=False, markup=False)


@rollout_app.command("watch")
def rollout_watch(
    repo: RepoOption,
    keys: KeysOption,
    channel: Annotated[str | None, typer.Option(help="Only this channel [default: every running rollout]")] = None,
    loop: Annotated[bool, typer.Option(help="Keep watching (every --every seconds) instead of one pass for cron")] = False,
    every: Annotated[float, typer.Option(min=1.0, help="Seconds between passes with --loop")] = 60.0,
    db: DbOption = None,
) -> None:
    """Promote each running rollout's stage when its devices soaked healthy, halt it when they do not.
    With --loop, a pass that fails (the database or the repository unavailable) is logged in one line
    and retried, waiting longer each time; only the first pass's failure ends the command (exit 2)."""
    from edgeopt.rollout.control import Rollouts, keep_watching

    rollouts = Rollouts(repo)
    if not loop:
        _watch_pass(rollouts, repo, keys, channel, db)
        return

    def failed(message: str) -> None:
        err_console.print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} {message}", highlight=False, markup=False,
                          soft_wrap=True)

    keep_watching(lambda: _watch_pass(rollouts, repo, keys, channel, db), every, time.sleep, failed)


def _watch_pass(rollouts: Rollouts, repo: Path, keys: Path, channel: str | None, db: str | None) -> None:
    from edgeopt.rollout.control import fleet_evidence
    from edgeopt.rollout.policy import ACTIVE

    for state in rollouts.states():
        if state.status not in (*ACTIVE, "starting") or channel not in (None, state.channel):
            continue
        now = time.time()
        after, decision = rollouts.watch(keys, state.channel, fleet_evidence(repo, state.channel, db), now)
        out_console.print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} {state.channel} release "
                          f"{after.release}: {decision.action}: {after.reason}", highlight=False, markup=False)
