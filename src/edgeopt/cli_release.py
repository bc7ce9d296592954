"""The release side's commands: keys, the TUF repository, publish, refresh, serve (the fleet: cli_fleet.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeopt.console import err_console, out_console
from edgeopt.errors import ConfigError

keys_app = typer.Typer(help="Signing keys of the release repository (one per TUF role).", no_args_is_help=True,
                       rich_markup_mode=None)
repo_app = typer.Typer(help="The release repository (TUF metadata over static files).", no_args_is_help=True,
                       rich_markup_mode=None)

KeysOption = Annotated[Path, typer.Option(help="The folder made by 'edgeopt keys generate'")]


def _channels(text: str) -> tuple[str, ...]:
    from edgeopt.release.keys import check_channel

    return tuple(check_channel(c.strip()) for c in text.split(",") if c.strip())


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option(help="Folder for the keys (each mode 0600); keep root.key offline")],
    channels: Annotated[str, typer.Option(help="Comma-separated release channels, each with its own key")] = "stable",
) -> None:
    """Make an Ed25519 key per role: root, targets, snapshot, timestamp, and one per channel."""
    from edgeopt.release.keys import generate_keys

    paths = generate_keys(out, _channels(channels))
    out_console.print(f"wrote {len(paths)} keys to {out}: {', '.join(p.name for p in paths)}; keep root.key offline")


@keys_app.command("rotate")
def keys_rotate(
    repo: Annotated[Path, typer.Option(help="Release repository folder")],
    keys: KeysOption,
    role: Annotated[str, typer.Option(help="root, targets, snapshot, timestamp or channel-<name>")],
) -> None:
    """Replace a role's key (this revokes a lost or compromised key); devices follow on their next check."""
    from edgeopt.release.repository import Repository

    repository = Repository(repo)
    retired = repository.rotate(keys, role)
    out_console.print(f"rotated {role}: the old key is in {retired}; the new one in {keys}")
    if role == "root":
        out_console.print(
            f"devices that refresh from now on no longer accept the old root key, but a device still holding an older "
            f"root (not yet refreshed, or provisioned from an old file) accepts a chain signed from it: provision new "
            f"devices with {repository.trust_anchor()} ('edgeopt repo trust-anchor'), re-provision the others, and keep "
            f"{retired} offline or destroy it", highlight=False)


@repo_app.command("init")
def repo_init(
    repo: Annotated[Path, typer.Argument(help="A new, empty folder for the repository")],
    keys: KeysOption,
    channels: Annotated[str, typer.Option(help="Comma-separated release channels")] = "stable",
) -> None:
    """Create the repository's signed metadata (needs the root key, once)."""
    from edgeopt.release.repository import Repository

    root = Repository(repo).init(keys, _channels(channels))
    out_console.print(f"created {repo}; copy {root} to every device as its trusted root (--root); after a root "
                      f"rotation, 'edgeopt repo trust-anchor {repo}' names the newest one")


@repo_app.command("add-channel")
def repo_add_channel(
    repo: Annotated[Path, typer.Argument(help="Release repository folder")],
    channel: Annotated[str, typer.Argument(help="New channel name, e.g. beta")],
    keys: KeysOption,
) -> None:
    """Add a channel with its own key (signed by the targets key)."""
    from edgeopt.release.repository import Repository

    Repository(repo).add_channel(keys, channel)
    out_console.print(f"added channel {channel} to {repo}")


@repo_app.command("trust-anchor")
def repo_trust_anchor(
    repo: Annotated[Path, typer.Argument(help="Release repository folder")],
    out: Annotated[Path | None, typer.Option(help="Copy it to this file (e.g. to give it to devices) instead of printing its path")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists")] = False,
) -> None:
    """The root a new device must trust (device run --root): the newest N.root.json."""
    from edgeopt.outputs import write_bytes_atomic
    from edgeopt.release.repository import Repository

    anchor = Repository(repo).trust_anchor()
    if out is None:
        out_console.print(str(anchor), highlight=False, markup=False)
        return
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass a file name, e.g. root.json")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it")
    write_bytes_atomic(out, anchor.read_bytes())
    out_console.print(f"wrote {out} (a copy of {anchor}); give it to devices as --root", highlight=False)


@repo_app.command("status")
def repo_status(repo: Annotated[Path, typer.Argument(help="Release repository folder")]) -> None:
    """Each role's version and expiry, and each channel's current release."""
    from edgeopt.release.repository import Repository

    repository = Repository(repo)
    table = Table(title=f"{repo}", title_justify="left")
    for col in ("role", "version", "expires"):
        table.add_column(col)
    for role, version, expires in repository.status():
        table.add_row(role, str(version), expires)
    out_console.print(table)
    out_console.print(f"trust anchor for new devices (--root): {repository.trust_anchor()}", highlight=False)
    for channel in repository.channels():
        current = repository.current_release(channel)
        out_console.print(f"{channel}: " + (f"release {current['release']} ({current.get('method')}, {current['length']:,} bytes)"
                                             if current else "no release yet"), highlight=False)


def publish(
    run_dir: Annotated[Path, typer.Argument(help="Folder written by 'edgeopt optimize'")],
    repo: Annotated[Path, typer.Option(help="Release repository folder (made by 'edgeopt repo init')")],
    keys: KeysOption,
    channel: Annotated[str, typer.Option(help="Channel to point at the new release")] = "stable",
    variant: Annotated[str | None, typer.Option(help="Publish this variant instead of the selected one")] = None,
    compress: Annotated[bool, typer.Option("--compress/--no-compress", help="Send the model zstd-compressed")] = True,
) -> None:
    """Make the selected model the channel's new release, signed by the channel's key."""
    from edgeopt.release.repository import Repository, release_custom

    model, labels, custom = release_custom(run_dir, variant)
    published = Repository(repo).publish_release(keys, channel, model, labels, custom, compress=compress)
    sent = f", {published['length']:,} bytes sent (zstd)" if compress else ""
    out_console.print(
        f"published release {published['release']} on {channel}: {custom['method']} "
        f"({published['uncompressed_length']:,} bytes{sent}, sha256 {published['model_sha256'][:12]}...)"
    )


def publish_job(
    run_dir: Annotated[Path, typer.Argument(help="Folder written by 'edgeopt optimize'")],
    repo: Annotated[Path, typer.Option(help="Release repository folder")],
    keys: KeysOption,
    variants: Annotated[str | None, typer.Option(help="Comma-separated candidates [default: every variant]")] = None,
) -> None:
    """Publish a signed benchmark job: agents measure the candidates when idle and upload the figures
    ('edgeopt choose RUN --fleet REPO' then chooses per device class)."""
    from edgeopt.release.repository import Repository

    names = tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else None
    job = Repository(repo).publish_job(keys, run_dir, names)
    out_console.print(f"published benchmark job {job['job']} ({len(job['variants'])} variants); devices with "
                      "--key-file and labelled samples run it when idle")


def refresh(
    repo: Annotated[Path, typer.Option(help="Release repository folder")],
    keys: KeysOption,
) -> None:
    """Renew the timestamp (expires daily: run this from cron) and whatever else expires soon."""
    from edgeopt.release.repository import Repository

    renewed, warnings = Repository(repo).refresh(keys)
    out_console.print(f"re-signed: {', '.join(renewed)}")
    for warning in warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False)


def serve(
    repo: Annotated[Path, typer.Argument(help="Release repository folder")],
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you say otherwise")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
    rate: Annotated[float | None, typer.Option(help="Bandwidth limit per download, KB/s (experiments)")] = None,
    db: Annotated[str | None, typer.Option(help="Fleet database URL (postgresql+psycopg://user@host/db) or SQLite "
                                                "file [default: REPO/fleet/fleet.db]")] = None,
) -> None:
    """Serve the repository's metadata and target files (Range, ETag), take signed device reports, and show
    operators the fleet page (http://HOST:PORT/fleet)."""
    from edgeopt.release.repository import Repository
    from edgeopt.release.server import serve as run_serve

    if not Repository(repo).exists():
        raise ConfigError(f"{repo} is not a release repository; create it with 'edgeopt repo init {repo} --keys KEYS'")
    run_serve(repo, host, port, rate, db)


def register(app: typer.Typer) -> None:
    from edgeopt.cli_fleet import fleet_app

    app.add_typer(keys_app, name="keys")
    app.add_typer(repo_app, name="repo")
    app.add_typer(fleet_app, name="fleet")
    app.command()(publish)
    app.command(name="publish-job")(publish_job)
    app.command()(refresh)
    app.command()(serve)
