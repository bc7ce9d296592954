"""`edgeopt device ...`: what runs on the sorting machine. Needs only the light install (no
TensorFlow): numpy, Pillow, httpx, python-tuf and one inference runtime."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeopt.console import EXIT_FAILED, EXIT_REFUSED, RichProgress, err_console, out_console
from edgeopt.errors import ConfigError

device_app = typer.Typer(help="What runs on the sorting machine.", no_args_is_help=True, rich_markup_mode=None)
# Host names that OS images ship with: a fleet of them would share one name in reports and one bucket in rollouts.
_IMAGE_HOSTNAMES = re.compile(r"^(raspberrypi|raspberry|localhost|ubuntu|debian|dietpi|armbian|alarm|pi|orangepi\w*|"
                              r"bananapi\w*|nanopi\w*|rock\w*|odroid\w*|beaglebone\w*|jetson\w*|tinker\w*)$", re.IGNORECASE)
# The longest --device-class a report carries (fleet.report.DeviceReport).
MAX_DEVICE_CLASS = 200


@device_app.command("run")
def device_run(
    server: Annotated[str, typer.Option(help="The repository's URL (any static web server), e.g. http://127.0.0.1:8080")],
    state: Annotated[Path, typer.Option(help="The device's state folder")],
    root: Annotated[Path, typer.Option(
        help="Trusted root: the repository's newest root ('edgeopt repo trust-anchor REPO --out FILE'), copied to the device")],
    channel: Annotated[str, typer.Option(help="Release channel to follow")] = "stable",
    device_id: Annotated[str | None, typer.Option(
        help="This device's own name, as enrolled: in its reports and its rollout buckets [default: host name]")] = None,
    key_file: Annotated[Path | None, typer.Option(
        help="The device's key, which signs its reports: from 'edgeopt fleet enroll --out' or 'edgeopt device keygen'")] = None,
    device_class: Annotated[str | None, typer.Option(help="Fleet class for benchmarks [default: from the profile]")] = None,
    interval: Annotated[float, typer.Option(min=1.0, help="Mean seconds between checks")] = 30.0,
    jitter: Annotated[float, typer.Option(min=0.0, max=0.99, help="Each wait is drawn from interval x [1-j, 1+j]")] = 0.5,
    max_backoff: Annotated[float, typer.Option(min=1.0, help="Longest wait, seconds, after faults")] = 600.0,
    report_every: Annotated[float, typer.Option(min=0.0, help="Seconds between reports while nothing changes")] = 300.0,
    latency_budget_ms: Annotated[float, typer.Option(help="Smoke test: max median ms per image")] = 2000.0,
    min_accuracy: Annotated[float | None, typer.Option(help="Smoke test: accuracy floor on state/samples/<class>/")] = None,
    min_rate: Annotated[float, typer.Option(min=1.0, help="Slowest transfer accepted, bytes/s over --rate-window")] = 4096.0,
    rate_window: Annotated[float, typer.Option(min=0.1, help="Seconds over which --min-rate is measured")] = 30.0,
    keep_releases: Annotated[int, typer.Option(min=0, help="Releases kept besides active and previous")] = 2,
    once: Annotated[bool, typer.Option(help="Check once and exit (exit code 3 when a release was refused)")] = False,
) -> None:
    """Keep the channel's newest signed, working release active (verify, resume, smoke-test, switch, roll back)."""
    from edgeopt.device.agent import Agent, AgentConfig
    from edgeopt.device.fetch import Limits
    from edgeopt.device.smoke import SmokeLimits
    from edgeopt.fleet.report import DEVICE_ID

    if device_id is not None and not re.fullmatch(DEVICE_ID, device_id):
        raise ConfigError(f"--device-id {device_id!r} must be letters, digits, '.', '_' or '-' (up to 64), starting "
                          "with a letter or digit")
    if device_class is not None and not 0 < len(device_class) <= MAX_DEVICE_CLASS:
        raise ConfigError(f"--device-class must be 1 to {MAX_DEVICE_CLASS} characters (it has {len(device_class)})")
    if device_id is None:
        device_id = socket.gethostname()
        if _IMAGE_HOSTNAMES.match(device_id) or not re.fullmatch(DEVICE_ID, device_id):
            err_console.print(f"warning: no --device-id, and the host name {device_id!r} is one an OS image gives every "
                              "machine (or unfit for reports): give each device its own --device-id (the name it was "
                              "enrolled under), or devices sharing a name share its reports and its rollout bucket",
                              highlight=False, markup=False, soft_wrap=True)
    if key_file is not None:
        from edgeopt.fleet.auth import load_device_key

        if not key_file.is_file():
            raise ConfigError(f"--key-file {key_file} does not exist; make one with 'edgeopt device keygen' (then enroll its "
                              "public key) or 'edgeopt fleet enroll --out'")
        load_device_key(key_file)  # a wrong file is said now, not at the first report
    config = AgentConfig(
        server=server, state=state, root=root, channel=channel, device_id=device_id or socket.gethostname(),
        key_file=key_file, device_class=device_class,
        smoke=SmokeLimits(latency_budget_ms=latency_budget_ms, min_accuracy=min_accuracy),
        limits=Limits(min_rate_bps=min_rate, rate_window_s=rate_window), keep_releases=keep_releases,
    )
    agent = Agent(config)
    if once:
        outcome = agent.check_once()
        out_console.print(str(outcome), highlight=False, markup=False)
        if outcome.refused:
            raise typer.Exit(EXIT_REFUSED)
        if outcome.kind in ("unreachable", "retry"):  # nothing refused, but the check did not complete
            raise typer.Exit(EXIT_FAILED)
    else:
        from edgeopt.device.poll import LoopConfig, run_agent
        from edgeopt.device.schedule import PollPolicy

        policy = PollPolicy(interval_s=interval, jitter=jitter, max_backoff_s=max_backoff,
                            min_fault_s=min(1.0, max_backoff), backoff_base_s=min(5.0, max_backoff))
        run_agent(agent, LoopConfig(policy=policy, report_every_s=report_every))


@device_app.command("keygen")
def device_keygen(
    out: Annotated[Path, typer.Option(help="File for the device's private key (mode 0600), e.g. device/device.key")],
) -> None:
    """Make this device's signing key and print its public key, for 'edgeopt fleet enroll --public-key'."""
    from edgeopt.fleet.auth import generate_device_key

    out.parent.mkdir(parents=True, exist_ok=True)
    public = generate_device_key(out)
    out_console.print(public, highlight=False, markup=False)
    err_console.print(f"wrote {out}; on the release side run: edgeopt fleet enroll DEVICE_ID --repo REPO --public-key {public}",
                      highlight=False, markup=False)


@device_app.command("sort")
def device_sort(
    state: Annotated[Path, typer.Option(help="The device's state folder (its active release)")],
    watch: Annotated[Path, typer.Option(help="Folder where the camera writes frames")],
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads")] = 1,
) -> None:
    """Classify each new frame with the active release; one JSON line per frame on stdout."""
    from edgeopt.device.sort import sort_frames

    if not watch.is_dir():
        raise ConfigError(f"frames folder {watch} does not exist; pass the folder the camera writes to")
    sort_frames(state, watch, threads=threads)


@device_app.command("profile")
def device_profile(
    out: Annotated[Path | None, typer.Option(help="Write the profile (JSON) here instead of printing it")] = None,
) -> None:
    """What this device is: runtimes, their versions and health, CPU model and flags (int8 dot
    product), cores, memory."""
    from edgeopt.machine import describe_machine, device_class
    from edgeopt.runtimes.health import check_installed_runtimes

    profile = describe_machine()
    profile["device_class"] = device_class(profile)
    health = check_installed_runtimes()  # each runs a tiny model in a child process
    profile["runtime_health"] = {name: h.to_jsonable() for name, h in health.items()}
    for h in health.values():
        if not h.healthy:
            err_console.print(f"warning: {h.problem}", highlight=False, markup=False, soft_wrap=True)
    text = json.dumps(profile, indent=1)
    if out is None:
        out_console.print(text, highlight=False, markup=False)
    else:
        from edgeopt.outputs import write_bytes_atomic

        write_bytes_atomic(out, text.encode())
        out_console.print(f"wrote {out}")


@device_app.command("bench")
def device_bench(
    run_dir: Annotated[Path, typer.Argument(help="An optimize run folder copied to this device (results.json, variants/)")],
    out: Annotated[Path, typer.Option(help="Results file to write (read by 'edgeopt choose --device-results')")],
    images: Annotated[Path | None, typer.Option(
        help="Labelled samples DIR/<class>/*.jpg for the accuracy check [default: the run's test images, if here]")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads (the device's cores in use)")] = 1,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved latency rounds")] = 11,
    invocations: Annotated[int, typer.Option(min=1, help="Timed invocations per variant per round")] = 25,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists")] = False,
    isolate: Annotated[bool, typer.Option(
        help="Measure each variant in a process of its own, so that a runtime crash costs one row "
             "(--no-isolate: all in this process, less memory)")] = True,
) -> None:
    """Run every variant of an optimize run here: latency, accuracy, and what does not run and why."""
    from edgeopt.config import MeasureConfig
    from edgeopt.device.bench import bench_run
    from edgeopt.outputs import write_bytes_atomic

    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass a file name, e.g. device-results.json")
    for read in (run_dir, images):
        if read is not None and out.resolve().is_relative_to(read.resolve()):
            raise ConfigError(f"--out {out} is inside {read}, which this command reads; write it elsewhere")
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it")
    results = bench_run(run_dir, MeasureConfig(threads=threads, rounds=rounds, invocations=invocations),
                        images, RichProgress(), isolate=isolate)
    write_bytes_atomic(out, results.to_json().encode())
    table = Table(title=f"{run_dir} on this device", title_justify="left")
    for col in ("variant", "loads", "test acc %", "ms/image", "runtime"):
        table.add_column(col)
    for v in results.variants:
        table.add_row(v.name, "yes" if v.loadable else f"no: {v.load_error}",
                      f"{100 * v.test.accuracy:.2f}" if v.test else "-",
                      f"{v.latency.median_ms:.2f}" if v.latency else "-", v.runtime)
    out_console.print(table)
    out_console.print(f"wrote {out}; choose with: edgeopt choose {run_dir} --device-results {out}")
