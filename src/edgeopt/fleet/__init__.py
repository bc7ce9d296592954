"""The fleet: what devices tell the release side, and where the release side keeps it.

    report.py    the typed, size-limited report a device sends (health included)
    auth.py      per-device signed requests (Ed25519) and operator tokens; light: the device imports it
    store.py     the fleet database (SQLAlchemy: SQLite by default, PostgreSQL by URL); server side only
    tables.py    its tables; migrations/ the Alembic scripts that build them
    overview.py  one row per device for `edgeopt fleet show` and GET /fleet.json
    view.py      what the fleet page shows: each device's health, a page of devices, each rollout
    page.py      the fleet page of `edgeopt serve`: operators' sign-in, /fleet, /fleet.json;
                 its HTML, script and style sheet in assets/

Importing this package loads only the report schema (pydantic): never SQLAlchemy.
"""

from edgeopt.fleet.report import MAX_BENCH_BYTES, MAX_REPORT_BYTES, DeviceReport, InstallOutcome, Refusal, ServiceWindow

__all__ = ["MAX_BENCH_BYTES", "MAX_REPORT_BYTES", "DeviceReport", "InstallOutcome", "Refusal", "ServiceWindow"]
