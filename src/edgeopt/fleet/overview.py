"""One row per enrolled device, from the store: what `edgeopt fleet show` prints and GET /fleet.json
answers (plain JSON values, so the fleet page can use the same rows)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeopt.fleet.store import FleetStore, StoredReport


def _time(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def device_row(device_id: str, enrolled: dt.datetime | None, revoked: dt.datetime | None,
               stored: StoredReport | None, now: dt.datetime) -> dict[str, Any]:
    """A device's enrollment and latest report, flattened: None where nothing was reported."""
    row: dict[str, Any] = {"device_id": device_id, "enrolled": _time(enrolled), "revoked": _time(revoked)}
    report = stored.report if stored else None
    row["reported"] = _time(stored.received) if stored else None
    row["report_age_s"] = round((now - stored.received).total_seconds()) if stored else None
    row["channel"] = report.channel if report else None
    row["device_class"] = report.device_class if report else None
    row["release"] = report.active_release if report else None
    row["previous_release"] = report.previous_release if report else None
    row["smoke_latency_ms"] = report.latency_ms if report else None
    install = report.install if report else None
    row["install"] = install.model_dump(exclude_none=True) if install else None
    row["rollbacks"] = report.rollbacks if report else None
    row["restarts"] = report.restarts if report else None
    for key in ("service", "previous_service"):
        window = getattr(report, key) if report else None
        row[key] = window.model_dump(exclude_none=True) if window else None
    row["refusals"] = len(report.refusals) if report else 0
    row["last_refusal"] = report.refusals[-1].model_dump() if report and report.refusals else None
    row["last_error"] = report.last_error if report else None
    return row


def fleet_rows(store: FleetStore, now: dt.datetime, channel: str | None = None) -> list[dict[str, Any]]:
    """Every enrolled device (also those that never reported), by id; with `channel`, only the
    devices whose latest report is on that channel."""
    latest = {s.device_id: s for s in store.latest(channel)}
    rows = []
    for device in store.devices():
        stored = latest.get(device.device_id)
        if channel is not None and stored is None:
            continue
        rows.append(device_row(device.device_id, device.enrolled, device.revoked, stored, now))
    return rows
