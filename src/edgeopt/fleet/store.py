"""The fleet database: enrolled devices, every report (history) and each device's latest one,
request nonces and operators. SQLAlchemy Core; SQLite (WAL) in REPO/fleet/fleet.db by default,
PostgreSQL through a URL (postgresql+psycopg://user@host/db); the same schema, migrated by Alembic
when the store is opened. The only module that speaks SQL.

A report costs O(1): one insert into the history and one upsert of the device's latest row, in
one transaction with its nonce. Server side only: it imports SQLAlchemy; the device never imports
it. Anything time-driven takes the time as an argument, so a simulated clock can drive it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeopt.errors import ConfigError
from edgeopt.fleet import tables as t
from edgeopt.fleet.auth import MAX_SKEW_S, Replayed
from edgeopt.fleet.report import DEVICE_ID, DeviceReport

MIGRATIONS = Path(__file__).parent / "migrations"
# The default database, inside the release repository (never served: only metadata/ and targets/ are).
DEFAULT_DB = Path("fleet") / "fleet.db"
# Serializes migrations of one PostgreSQL database between processes (pg_advisory_xact_lock key).
_PG_MIGRATION_LOCK = 0x6564676F70740001
# Nonces are pruned at most this often (seconds of the clock the caller passes).
_NONCE_PRUNE_EVERY_S = 60.0
# Device ids per IN (...) list (SQLite allows 32,766 bound parameters; keep statements small).
_IN_CHUNK = 500
_OPERATOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    public_key: bytes
    enrolled: dt.datetime
    revoked: dt.datetime | None


@dataclass(frozen=True)
class StoredReport:
    """A report as the store holds it: history rows lack the device profile (latest rows have it)."""

    id: int
    device_id: str
    received: dt.datetime
    report: DeviceReport


def database_url(repo: Path | None = None, db: str | None = None) -> str:
    """The SQLAlchemy URL of the fleet database: --db (a URL or a SQLite file), else the repository's."""
    if db:
        if "://" not in db:  # a plain file name: SQLite
            return f"sqlite:///{Path(db).resolve()}"
        scheme, rest = db.split("://", 1)
        if scheme in ("postgresql", "postgres"):  # SQLAlchemy's default driver would be psycopg2: not installed
            return f"postgresql+psycopg://{rest}"
        return db
    if repo is None:
        raise ConfigError("no fleet database: pass --repo REPO (its fleet/fleet.db) or --db URL")
    return f"sqlite:///{(Path(repo) / DEFAULT_DB).resolve()}"


def open_store(repo: Path | None = None, db: str | None = None, must_exist: bool = False) -> FleetStore:
    """The fleet database; with `must_exist` (commands that only read), a SQLite file that is not
    there is refused instead of created: a mistyped --db would otherwise read as an empty fleet."""
    return FleetStore(database_url(repo, db), must_exist)


class StoreUnavailable(ConfigError):
    """The database cannot be reached, read or written now (server down, disk full, a file that is
    not a database): one line, not a driver traceback."""

    def __init__(self, url: str, exc: BaseException) -> None:
        orig = getattr(exc, "orig", None)
        lines = str(orig if orig is not None else exc).strip().splitlines()
        self.detail = lines[0] if lines else type(exc).__name__
        super().__init__(f"the fleet database {url} is unavailable: {self.detail}")


def _utc(value: dt.datetime) -> dt.datetime:
    """Aware UTC (SQLite hands back naive datetimes, stored as UTC)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _engine(url: str, must_exist: bool = False) -> Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(f"{url!r} is not a database URL; use e.g. postgresql+psycopg://user@host/db or a SQLite file") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError("the fleet database must be a file (an in-memory SQLite database is lost with its process)")
        if must_exist and not Path(parsed.database).is_file():
            raise ConfigError(f"the fleet database {parsed.database} does not exist; check --db (devices' reports are "
                              "where 'edgeopt serve' keeps them: REPO/fleet/fleet.db unless it was given --db)")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # the driver's own BEGIN is replaced by the one below
            cursor = dbapi_connection.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # A writer takes the write lock at once: a reader that later writes could otherwise fail
            # with "database is locked" when another writer went first (busy_timeout cannot help).
            write = connection.get_execution_options().get("edgeopt_write")
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    try:
        return sa.create_engine(parsed, pool_pre_ping=True)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"no driver for {parsed.drivername} ({exc}); use postgresql+psycopg:// (psycopg 3, in the build extra)") from None


class FleetStore:
    """The fleet database of one URL. Open it with open_store(); it migrates the schema on open."""

    def __init__(self, url: str, must_exist: bool = False) -> None:
        self.engine = _engine(url, must_exist)
        self.url = self.engine.url.render_as_string(hide_password=True)
        self.backend = self.engine.dialect.name
        self._nonces_pruned_at = float("-inf")
        # The per-report statements, built once with bound parameters: SQLAlchemy compiles each one
        # once (values written into a statement would make every report a new statement to build).
        nonce = self._insert(t.nonces)
        self._add_nonce = nonce.on_conflict_do_nothing().returning(t.nonces.c.nonce)
        self._add_report = sa.insert(t.reports)
        latest = self._insert(t.latest)
        self._set_latest = latest.on_conflict_do_update(
            index_elements=[t.latest.c.device_id],
            set_={c.name: latest.excluded[c.name] for c in t.latest.columns if c.name != "device_id"})
        try:
            self._migrate()
        except StoreUnavailable as exc:
            self.engine.dispose()
            raise ConfigError(f"cannot open the fleet database {self.url}: {exc.detail}; check --db") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema ------------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Bring the schema to the newest revision this edgeopt ships (nothing when it is there)."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        script = ScriptDirectory.from_config(config)
        head = script.get_current_head()
        if self.revision() == head:  # the usual case: no write lock, so a read-only database opens too
            return
        with self._write() as conn:
            if self.backend == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            current = MigrationContext.configure(conn, opts={"version_table": t.VERSION_TABLE}).get_current_revision()
            if current == head:
                return
            known = {s.revision for s in script.walk_revisions()}
            if current is not None and current not in known:
                raise ConfigError(f"the fleet database {self.url} is at schema revision {current}, which this edgeopt does "
                                  "not know: it was migrated by a newer edgeopt; upgrade edgeopt")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self._read() as conn:
            return MigrationContext.configure(conn, opts={"version_table": t.VERSION_TABLE}).get_current_revision()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._unavailable(), self.engine.connect() as conn:
            conn.execution_options(edgeopt_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._unavailable(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """The database's own failures as StoreUnavailable; a broken constraint (IntegrityError)
        and a wrong statement (a bug) stay what they are."""
        try:
            yield
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.DataError):
            raise
        except sa.exc.DBAPIError as exc:  # OperationalError (down, locked, disk full), "file is not a database", ...
            raise StoreUnavailable(self.url, exc) from None

    def _insert(self, table: sa.Table) -> Any:
        """The backend's INSERT, which has ON CONFLICT (SQLite and PostgreSQL alike)."""
        from sqlalchemy.dialects import postgresql, sqlite

        return postgresql.insert(table) if self.backend == "postgresql" else sqlite.insert(table)

    # --- devices -----------------------------------------------------------------------------
    def enroll(self, device_id: str, public_key: bytes, now: dt.datetime, replace: bool = False) -> bool:
        """Keep `device_id`'s public key; True when it replaced an earlier one (whose key stops working)."""
        if not re.match(DEVICE_ID, device_id):
            raise ConfigError(f"device id {device_id!r} must be letters, digits, '.', '_' or '-' (up to 64)")
        if len(public_key) != 32:
            raise ConfigError("an Ed25519 public key is 32 bytes")
        with self._write() as conn:
            known = conn.execute(sa.select(t.devices.c.device_id).where(t.devices.c.device_id == device_id)).first()
            if known and not replace:
                raise ConfigError(f"{device_id} is already enrolled; pass --replace to give it a new key (its old key "
                                  "stops working)")
            values = {"public_key": public_key, "enrolled_at": _utc(now), "revoked_at": None}
            if known:
                conn.execute(sa.update(t.devices).where(t.devices.c.device_id == device_id).values(**values))
            else:
                conn.execute(sa.insert(t.devices).values(device_id=device_id, **values))
        return known is not None

    def enroll_many(self, keys: dict[str, bytes], now: dt.datetime) -> None:
        """Enroll new devices in one transaction (provisioning a batch, simulations); none may exist yet."""
        bad = [d for d, k in keys.items() if not re.match(DEVICE_ID, d) or len(k) != 32]
        if bad:
            raise ConfigError(f"device {bad[0]!r}: ids are letters, digits, '.', '_' or '-' (up to 64); keys are 32 bytes")
        rows = [{"device_id": d, "public_key": k, "enrolled_at": _utc(now), "revoked_at": None} for d, k in keys.items()]
        try:
            with self._write() as conn:
                if rows:
                    conn.execute(sa.insert(t.devices), rows)
        except sa.exc.IntegrityError:
            raise ConfigError("some of these devices are enrolled already; enroll them one by one with --replace") from None

    def revoke(self, device_id: str, now: dt.datetime) -> None:
        """Refuse the device's requests from now on; its history stays."""
        with self._write() as conn:
            done = conn.execute(sa.update(t.devices).where(t.devices.c.device_id == device_id)
                                .values(revoked_at=_utc(now))).rowcount
        if not done:
            raise ConfigError(f"{device_id} is not enrolled; see 'edgeopt fleet show'")

    def public_key(self, device_id: str) -> bytes | None:
        """The enrolled public key of a device, or None when it is unknown or revoked."""
        with self._read() as conn:
            row = conn.execute(sa.select(t.devices.c.public_key).where(
                t.devices.c.device_id == device_id, t.devices.c.revoked_at.is_(None))).first()
        return bytes(row.public_key) if row else None

    def credentials(self, device_id: str, nonce: str) -> tuple[bytes | None, bool]:
        """(enrolled public key or None, whether the nonce was used): a signed request's checks in one read."""
        with self._read() as conn:
            row = conn.execute(sa.select(t.devices.c.public_key).where(
                t.devices.c.device_id == device_id, t.devices.c.revoked_at.is_(None))).first()
            used = conn.execute(sa.select(t.nonces.c.nonce).where(
                t.nonces.c.device_id == device_id, t.nonces.c.nonce == nonce)).first() is not None
        return (bytes(row.public_key) if row else None), used

    def devices(self) -> list[Enrollment]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.devices).order_by(t.devices.c.device_id)).all()
        return [Enrollment(r.device_id, bytes(r.public_key), _utc(r.enrolled_at), r.revoked_at and _utc(r.revoked_at))
                for r in rows]

    # --- requests ----------------------------------------------------------------------------
    def nonce_used(self, device_id: str, nonce: str) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(t.nonces.c.nonce).where(
                t.nonces.c.device_id == device_id, t.nonces.c.nonce == nonce)).first() is not None

    def use_nonce(self, device_id: str, nonce: str, time_s: int, now: dt.datetime) -> None:
        """Record a signed request's nonce; Replayed when the device used it before."""
        with self._write() as conn:
            self._use_nonce(conn, device_id, nonce, time_s, now)

    def _use_nonce(self, conn: Connection, device_id: str, nonce: str, time_s: int, now: dt.datetime) -> None:
        # RETURNING, not rowcount: psycopg reports no rowcount for an INSERT here (-1)
        inserted = conn.execute(self._add_nonce, {"device_id": device_id, "nonce": nonce, "time_s": time_s}).first()
        if inserted is None:
            raise Replayed(device_id)
        now_s = _utc(now).timestamp()
        if now_s - self._nonces_pruned_at >= _NONCE_PRUNE_EVERY_S:
            # a request older than MAX_SKEW_S is refused as stale anyway: its nonce need not be kept
            conn.execute(sa.delete(t.nonces).where(t.nonces.c.time_s < int(now_s - 2 * MAX_SKEW_S)))
            self._nonces_pruned_at = now_s

    def record_report(self, report: DeviceReport, received: dt.datetime,
                      nonce: tuple[str, int] | None = None) -> int:
        """Keep a report of an enrolled device: into the history, and as the device's latest. With
        `nonce` (nonce, request time in s) the nonce is recorded in the same transaction (Replayed
        when used before). Returns the history id."""
        received = _utc(received)
        whole = report.model_dump(mode="json", exclude_none=True)
        history = {k: v for k, v in whole.items() if k != "profile"}
        try:
            with self._write() as conn:
                if nonce is not None:
                    self._use_nonce(conn, report.device_id, nonce[0], nonce[1], received)
                columns = {"device_id": report.device_id, "received_at": received, "channel": report.channel,
                           "active_release": report.active_release}
                inserted = conn.execute(self._add_report, {**columns, "report": history})
                report_id = int(inserted.inserted_primary_key[0])  # type: ignore[index]
                conn.execute(self._set_latest, {**columns, "report_id": report_id, "device_class": report.device_class,
                                                "report": whole})
        except sa.exc.IntegrityError:
            raise ConfigError(f"device {report.device_id} is not enrolled; enroll it with 'edgeopt fleet enroll'") from None
        return report_id

    # --- reading -----------------------------------------------------------------------------
    @staticmethod
    def _stored(row: Any) -> StoredReport:
        return StoredReport(int(row.id), row.device_id, _utc(row.received_at), DeviceReport.model_validate(row.report))

    def latest(self, channel: str | None = None, devices: Collection[str] | None = None,
               enrolled_only: bool = False) -> list[StoredReport]:
        """Each device's latest report (profile included), by device id; `id` is its history id.
        With `devices`, only theirs; with `enrolled_only`, none of a revoked device."""
        query = sa.select(t.latest.c.report_id.label("id"), t.latest.c.device_id, t.latest.c.received_at, t.latest.c.report)
        if channel is not None:
            query = query.where(t.latest.c.channel == channel)
        if enrolled_only:
            query = query.join(t.devices, t.devices.c.device_id == t.latest.c.device_id).where(t.devices.c.revoked_at.is_(None))
        if devices is None:
            with self._read() as conn:
                return [self._stored(r) for r in conn.execute(query.order_by(t.latest.c.device_id))]
        wanted = sorted(devices)
        found: list[StoredReport] = []
        with self._read() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = query.where(t.latest.c.device_id.in_(wanted[start:start + _IN_CHUNK]))
                found += [self._stored(r) for r in conn.execute(chunk.order_by(t.latest.c.device_id))]
        return found

    def latest_ids(self) -> dict[str, int]:
        """Each device's latest report's history id, without reading any report: what a reader that
        keeps reports compares to fetch only the ones that changed."""
        with self._read() as conn:
            return {r.device_id: int(r.report_id) for r in conn.execute(sa.select(t.latest.c.device_id, t.latest.c.report_id))}

    def history(self, device_id: str | None = None, channel: str | None = None, since: dt.datetime | None = None,
                until: dt.datetime | None = None, limit: int | None = None, newest_first: bool = False) -> list[StoredReport]:
        """Reports in the order received (or newest first), filtered; `since` inclusive, `until` exclusive."""
        r = t.reports
        query = sa.select(r.c.id, r.c.device_id, r.c.received_at, r.c.report)
        if device_id is not None:
            query = query.where(r.c.device_id == device_id)
        if channel is not None:
            query = query.where(r.c.channel == channel)
        if since is not None:
            query = query.where(r.c.received_at >= _utc(since))
        if until is not None:
            query = query.where(r.c.received_at < _utc(until))
        query = query.order_by(r.c.id.desc() if newest_first else r.c.id).limit(limit)
        with self._read() as conn:
            return [self._stored(row) for row in conn.execute(query)]

    def marker(self) -> tuple[Any, ...]:
        """A value that changes whenever a device reports, is enrolled, re-keyed or revoked: a reader
        re-reads the fleet only when it changed. The sum of the latest rows' history ids grows with
        every report even when reports commit out of id order (PostgreSQL), which a maximum would miss."""
        d, latest = t.devices.c, t.latest.c
        with self._read() as conn:
            reports = conn.execute(sa.select(sa.func.count(), sa.func.sum(latest.report_id))).one()
            devices = conn.execute(sa.select(sa.func.count(), sa.func.max(d.enrolled_at), sa.func.count(d.revoked_at),
                                             sa.func.max(d.revoked_at))).one()
        return (*reports, *devices)

    def count_reports(self, device_id: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(t.reports)
        if device_id is not None:
            query = query.where(t.reports.c.device_id == device_id)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def prune_history(self, before: dt.datetime) -> int:
        """Delete history received before `before` (each device's latest report stays); how many rows."""
        with self._write() as conn:
            return int(conn.execute(sa.delete(t.reports).where(t.reports.c.received_at < _utc(before))).rowcount)

    # --- operators ---------------------------------------------------------------------------
    def add_operator(self, name: str, token_sha256: str, now: dt.datetime) -> None:
        if not _OPERATOR_NAME.match(name):
            raise ConfigError(f"operator name {name!r} must be letters, digits, '.', '_', '@' or '-' (up to 64)")
        try:
            with self._write() as conn:
                conn.execute(sa.insert(t.operators).values(name=name, token_sha256=token_sha256, created_at=_utc(now)))
        except sa.exc.IntegrityError:
            raise ConfigError(f"there is an operator named {name} already (names are never reused); choose another name") from None

    def revoke_operator(self, name: str, now: dt.datetime) -> None:
        with self._write() as conn:
            if not conn.execute(sa.update(t.operators).where(t.operators.c.name == name).values(revoked_at=_utc(now))).rowcount:
                raise ConfigError(f"no operator named {name}")

    def operator(self, token_sha256: str) -> str | None:
        """The name of the operator whose (unrevoked) token has this sha256, or None."""
        with self._read() as conn:
            row = conn.execute(sa.select(t.operators.c.name).where(
                t.operators.c.token_sha256 == token_sha256, t.operators.c.revoked_at.is_(None))).first()
        return row.name if row else None
