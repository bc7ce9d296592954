"""`edgeopt fleet ...`: enroll and revoke devices, operators, and read the fleet database."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from edgeopt.console import out_console
from edgeopt.errors import ConfigError

if TYPE_CHECKING:
    from edgeopt.fleet.store import FleetStore

fleet_app = typer.Typer(help="The devices: enrollment, reports, health, operators.", no_args_is_help=True,
                        rich_markup_mode=None)

DbOption = Annotated[str | None, typer.Option(
    help="Fleet database URL (postgresql+psycopg://user@host/db) or SQLite file [default: REPO/fleet/fleet.db]")]


def _store(repo: Path | None, db: str | None, reading: bool = False) -> FleetStore:
    """The fleet database; `reading` (a command that only reads): a --db SQLite file that does not
    exist is refused, not created empty."""
    from edgeopt.fleet.store import open_store
    from edgeopt.release.repository import Repository

    if db is None:
        if repo is None:
            raise ConfigError("pass the release repository (--repo REPO) or the fleet database (--db URL)")
        if not Repository(repo).exists():
            raise ConfigError(f"{repo} is not a release repository; create it with 'edgeopt repo init {repo} --keys KEYS' "
                              "or pass --db URL")
    return open_store(repo, db, must_exist=reading and db is not None)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


def _figure(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def _health(row: dict[str, Any]) -> tuple[str, str, str]:
    """(install, latency p50/p90, confidence) cells of a device row."""
    install = row.get("install") or {}
    install_cell = f"{install['result']} ({install['release']})" if install else "-"
    window = row.get("service") or {}
    latency = f"{_figure(window.get('latency_p50_ms'), '.1f')}/{_figure(window.get('latency_p90_ms'), '.1f')}" if window else "-"
    confidence = (f"{_figure(window.get('mean_confidence'), '.2f')}, {_figure(window.get('low_confidence_share'), '.0%')} low"
                  f" of {window['frames']}") if window else "-"
    return install_cell, latency, confidence


@fleet_app.command("show")
def fleet_show(
    repo_path: Annotated[Path | None, typer.Argument(metavar="[REPO]", help="Release repository folder (its fleet/fleet.db)")] = None,
    repo_option: Annotated[Path | None, typer.Option("--repo", help="The same as REPO, as the other fleet commands take it")] = None,
    db: DbOption = None,
    channel: Annotated[str | None, typer.Option(help="Only devices whose last report is on this channel")] = None,
    history: Annotated[str | None, typer.Option(help="A device's report history instead, newest first")] = None,
    limit: Annotated[int, typer.Option(min=1, help="With --history: reports shown")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Each enrolled device: class, channel, release, last report, health, refusals, last error."""
    from edgeopt.fleet.overview import device_row, fleet_rows

    if repo_path is not None and repo_option is not None and repo_path.resolve() != repo_option.resolve():
        raise ConfigError(f"two repositories given ({repo_path} and --repo {repo_option}); pass one")
    repo = repo_option or repo_path
    now = _now()
    with _store(repo, db, reading=True) as store:
        if history is not None:
            rows = [device_row(s.device_id, None, None, s, now) for s in store.history(device_id=history, limit=limit,
                                                                                       newest_first=True)]
            if not rows and history not in {d.device_id for d in store.devices()}:
                raise ConfigError(f"{history} is not enrolled in {store.url}; see 'edgeopt fleet show'")
        else:
            rows = fleet_rows(store, now, channel)
        where = store.url
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    title = f"reports of {history} ({where})" if history else f"fleet ({where})"
    table = Table(title=title, title_justify="left")
    columns = ("reported", "release", "install", "p50/p90 ms", "confidence", "rollbacks", "restarts", "refusals", "last error")
    for col in ("device", "class", "channel", *columns) if not history else columns:
        table.add_column(col)
    for r in rows:
        release = "-" if r["release"] is None else str(r["release"])
        if r.get("previous_release") is not None:
            release += f" (was {r['previous_release']})"
        reported = r["reported"] if history else _age(r["report_age_s"])
        if r.get("revoked"):
            reported += " (revoked)"
        cells = (reported, release, *_health(r), _figure(r.get("rollbacks"), "d"), _figure(r.get("restarts"), "d"),
                 str(r["refusals"]) + (f": {r['last_refusal']['what']}" if r.get("last_refusal") else ""),
                 r.get("last_error") or "-")
        table.add_row(*((r["device_id"], r["device_class"] or "-", r["channel"] or "-", *cells) if not history else cells))
    out_console.print(table)
    if repo is not None and not history:
        from edgeopt.rollout.control import Rollouts, describe

        for state in Rollouts(repo).states():  # each channel's staged rollout: where it stands, and why
            if channel in (None, state.channel):
                out_console.print(f"rollout {describe(state)}", highlight=False, markup=False)


@fleet_app.command("enroll")
def fleet_enroll(
    device_id: Annotated[str, typer.Argument(help="The device's name, as it reports (--device-id)")],
    repo: Annotated[Path | None, typer.Option(help="Release repository folder")] = None,
    db: DbOption = None,
    out: Annotated[Path | None, typer.Option(help="Generate the device's key here (mode 0600) and copy it to the device")] = None,
    public_key: Annotated[str | None, typer.Option(help="Or: the public key 'edgeopt device keygen' printed on the device")] = None,
    replace: Annotated[bool, typer.Option(help="Give an enrolled device a new key (its old key stops working)")] = False,
) -> None:
    """Enroll a device: the server keeps its public key; the device signs its reports with the private key."""
    from edgeopt.fleet import auth

    if (out is None) == (public_key is None):
        raise ConfigError("pass either --out FILE (generate the device's key here) or --public-key KEY (from "
                          "'edgeopt device keygen' on the device)")
    with _store(repo, db) as store:
        if out is not None:
            if out.exists():
                raise ConfigError(f"{out} already exists; choose another --out")
            if store.public_key(device_id) is not None and not replace:
                raise ConfigError(f"{device_id} is already enrolled; pass --replace to give it a new key")
            text = auth.generate_device_key(out)
        else:
            text = str(public_key)
        try:
            replaced = store.enroll(device_id, auth.parse_public_key(text), _now(), replace=replace)
        except ConfigError:
            if out is not None:
                out.unlink(missing_ok=True)  # a key the server does not know is of no use
            raise
    what = "gave a new key to" if replaced else "enrolled"
    where = f"; copy {out} to the device (mode 0600) and pass it as --key-file" if out else "; its reports are accepted now"
    out_console.print(f"{what} {device_id} ({text}){where}", highlight=False, markup=False)


@fleet_app.command("revoke")
def fleet_revoke(
    device_id: Annotated[str, typer.Argument(help="The device to refuse from now on")],
    repo: Annotated[Path | None, typer.Option(help="Release repository folder")] = None,
    db: DbOption = None,
) -> None:
    """Refuse a device's reports and uploads (a lost or retired device); its history stays."""
    with _store(repo, db) as store:
        store.revoke(device_id, _now())
    out_console.print(f"revoked {device_id}; enroll it again with --replace to give it a new key", highlight=False)


@fleet_app.command("add-operator")
def fleet_add_operator(
    name: Annotated[str, typer.Argument(help="Who reads the fleet data, e.g. alice")],
    out: Annotated[Path, typer.Option(help="File for the operator's token (mode 0600)")],
    repo: Annotated[Path | None, typer.Option(help="Release repository folder")] = None,
    db: DbOption = None,
) -> None:
    """Issue an operator's token for the fleet page and GET /fleet.json of 'edgeopt serve' (the server keeps only its hash)."""
    import os

    from edgeopt.fleet import auth

    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out")
    token = auth.new_operator_token()
    with _store(repo, db) as store:
        store.add_operator(name, auth.token_digest(token), _now())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    out_console.print(f"added operator {name}; sign in at /fleet of 'edgeopt serve' with the token in {out}, or send it "
                      "as 'Authorization: Bearer <token>' to /fleet.json; over loopback or TLS only", highlight=False)


@fleet_app.command("revoke-operator")
def fleet_revoke_operator(
    name: Annotated[str, typer.Argument(help="The operator whose token stops working")],
    repo: Annotated[Path | None, typer.Option(help="Release repository folder")] = None,
    db: DbOption = None,
) -> None:
    """Refuse an operator's token from now on; their fleet page sessions end at once."""
    with _store(repo, db) as store:
        store.revoke_operator(name, _now())
    out_console.print(f"revoked operator {name}; issue a new token with 'edgeopt fleet add-operator' under another name",
                      highlight=False)


@fleet_app.command("prune")
def fleet_prune(
    older_than_days: Annotated[float, typer.Option(min=0.0, help="Delete history older than this")],
    repo: Annotated[Path | None, typer.Option(help="Release repository folder")] = None,
    db: DbOption = None,
) -> None:
    """Delete old report history (each device's latest report stays)."""
    with _store(repo, db) as store:
        removed = store.prune_history(_now() - dt.timedelta(days=older_than_days))
    out_console.print(f"deleted {removed:,} reports older than {older_than_days:g} days", highlight=False)
