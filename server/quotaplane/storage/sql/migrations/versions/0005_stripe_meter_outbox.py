"""Stripe Billing Meters: what usage was reported, and the outbox of meter events.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

``meter_reports`` keeps, per (tenant, metric, hour) of ``usage_hourly``, how many units were
queued to Stripe already; ``meter_outbox`` holds one meter event per queued increment, with
the ``identifier`` Stripe deduplicates by, and keeps it after it was sent (state ``done``),
so nothing is sent again once Stripe's 24 h dedup window has passed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "meter_reports",
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        _at("hour_start"),
        sa.Column("reported", sa.BigInteger(), nullable=False),
        _at("reported_at"),
        sa.PrimaryKeyConstraint("tenant_id", "metric", "hour_start", name="pk_meter_reports"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_meter_reports_tenant_id_tenants"
        ),
        sa.CheckConstraint("reported >= 0", name="reported_not_negative"),
    )
    op.create_table(
        "meter_outbox",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        _at("hour_start"),
        sa.Column("event_name", sa.String(100), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("identifier", sa.String(100), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _at("next_attempt_at"),
        _at("first_attempt_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_meter_outbox"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_meter_outbox_tenant_id_tenants"
        ),
        sa.UniqueConstraint("identifier", name="uq_meter_outbox_identifier"),
        sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name="state"),
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    )
    op.create_index(
        "ix_meter_outbox_state_next_attempt_at", "meter_outbox", ["state", "next_attempt_at"]
    )
    op.create_index(
        "ix_meter_outbox_tenant_id_hour_start", "meter_outbox", ["tenant_id", "hour_start"]
    )


def downgrade() -> None:
    op.drop_index("ix_meter_outbox_tenant_id_hour_start", table_name="meter_outbox")
    op.drop_index("ix_meter_outbox_state_next_attempt_at", table_name="meter_outbox")
    op.drop_table("meter_outbox")
    op.drop_table("meter_reports")
