"""The fleet database's tables (SQLAlchemy Core), as the latest migration leaves them. The
migrations in migrations/versions/ create and change them; a test checks that the two agree.
Every name starts with fleet_, so the tables can share a PostgreSQL database with others."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

VERSION_TABLE = "fleet_alembic_version"

# Constraint names fixed by convention, so a migration can name what it changes on either backend.
metadata = sa.MetaData(naming_convention={
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
})

# A report as stored: JSON (JSONB on PostgreSQL, where it can be queried and indexed).
ReportJSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# History ids: 64-bit on PostgreSQL; SQLite's autoincrementing key must be INTEGER.
HistoryId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)

# Enrolled devices: the public half of each device's key. A revoked device keeps its row (and its
# history) but is refused.
devices = sa.Table(
    "fleet_devices", metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("public_key", sa.LargeBinary(32), nullable=False),
    sa.Column("enrolled_at", Time, nullable=False),
    sa.Column("revoked_at", Time, nullable=True),
)

# Every report ever accepted (the device profile only in fleet_latest: it rarely changes).
reports = sa.Table(
    "fleet_reports", metadata,
    sa.Column("id", HistoryId, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), sa.ForeignKey("fleet_devices.device_id"), nullable=False),
    sa.Column("received_at", Time, nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("active_release", sa.Integer, nullable=True),
    sa.Column("report", ReportJSON, nullable=False),
    sa.Index("ix_fleet_reports_device", "device_id", "id"),
    sa.Index("ix_fleet_reports_received", "received_at"),
)

# Each device's latest report, whole: one row a device, replaced on every report.
latest = sa.Table(
    "fleet_latest", metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("fleet_devices.device_id"), primary_key=True),
    sa.Column("report_id", HistoryId, nullable=False),
    sa.Column("received_at", Time, nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("active_release", sa.Integer, nullable=True),
    sa.Column("device_class", sa.String(200), nullable=True),
    sa.Column("report", ReportJSON, nullable=False),
    sa.Index("ix_fleet_latest_channel_release", "channel", "active_release"),
)

# Nonces of signed requests within the freshness window: a request is accepted once.
nonces = sa.Table(
    "fleet_nonces", metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("time_s", sa.BigInteger, nullable=False),
    sa.Index("ix_fleet_nonces_time", "time_s"),
)

# Operators who may read fleet data from the server: the sha256 of each one's token.
operators = sa.Table(
    "fleet_operators", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("revoked_at", Time, nullable=True),
)
