"""The fleet database's first schema: enrolled devices, report history, each device's latest
report, request nonces, operators.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as they were at this revision (tables.py moves on).
REPORT_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
HISTORY_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "fleet_devices",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("enrolled_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("device_id", name="pk_fleet_devices"),
    )
    op.create_table(
        "fleet_reports",
        sa.Column("id", HISTORY_ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("active_release", sa.Integer(), nullable=True),
        sa.Column("report", REPORT_JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fleet_reports"),
        sa.ForeignKeyConstraint(["device_id"], ["fleet_devices.device_id"], name="fk_fleet_reports_device_id"),
    )
    op.create_index("ix_fleet_reports_device", "fleet_reports", ["device_id", "id"])
    op.create_index("ix_fleet_reports_received", "fleet_reports", ["received_at"])
    op.create_table(
        "fleet_latest",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("report_id", HISTORY_ID, nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("active_release", sa.Integer(), nullable=True),
        sa.Column("device_class", sa.String(200), nullable=True),
        sa.Column("report", REPORT_JSON, nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_fleet_latest"),
        sa.ForeignKeyConstraint(["device_id"], ["fleet_devices.device_id"], name="fk_fleet_latest_device_id"),
    )
    op.create_index("ix_fleet_latest_channel_release", "fleet_latest", ["channel", "active_release"])
    op.create_table(
        "fleet_nonces",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("time_s", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "nonce", name="pk_fleet_nonces"),
    )
    op.create_index("ix_fleet_nonces_time", "fleet_nonces", ["time_s"])
    op.create_table(
        "fleet_operators",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_fleet_operators"),
        sa.UniqueConstraint("token_sha256", name="uq_fleet_operators_token_sha256"),
    )


def downgrade() -> None:
    for index, table in (("ix_fleet_nonces_time", "fleet_nonces"), ("ix_fleet_latest_channel_release", "fleet_latest"),
                         ("ix_fleet_reports_received", "fleet_reports"), ("ix_fleet_reports_device", "fleet_reports")):
        op.drop_index(index, table_name=table)
    for table in ("fleet_operators", "fleet_nonces", "fleet_latest", "fleet_reports", "fleet_devices"):
        op.drop_table(table)
