"""Initial ledger: tenants, API keys, usage, invoices, Stripe outbox and webhooks, notifications.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Written by hand and frozen: it spells every type and constraint name out instead of importing
``tables.py``, so later changes to the tables cannot rewrite history. Money is NUMERIC on
Postgres and exact decimal text on SQLite (see ``columns.Money``); timestamps carry a zone.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UNIT_PRICE = sa.Numeric(20, 6).with_variant(sa.String(22), "sqlite")
AMOUNT = sa.Numeric(20, 4).with_variant(sa.String(22), "sqlite")
NOT_VOID = sa.text("status <> 'void'")


def _id(name: str = "id", **kwargs: object) -> sa.Column[str]:
    return sa.Column(name, sa.String(36), **kwargs)  # type: ignore[arg-type]


def _at(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants"
    )


def upgrade() -> None:
    _create_tenants_and_keys()
    _create_usage()
    _create_invoices()
    _create_stripe_and_notifications()


def downgrade() -> None:
    op.drop_table("notifications_sent")
    op.drop_table("stripe_webhook_events")
    op.drop_index("ix_stripe_outbox_state_next_attempt_at", table_name="stripe_outbox")
    op.drop_table("stripe_outbox")
    op.drop_table("invoice_lines")
    op.drop_index("uq_invoices_tenant_id_period_open", table_name="invoices")
    op.drop_table("invoices")
    op.drop_index("ix_usage_events_tenant_id_occurred_at", table_name="usage_events")
    op.drop_table("usage_events")
    op.drop_table("usage_flushes")
    op.drop_table("usage_hourly")
    op.drop_index("ix_api_keys_tenant_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_plan_changes_tenant_id_effective_at", table_name="plan_changes")
    op.drop_table("plan_changes")
    op.drop_table("tenants")


def _create_tenants_and_keys() -> None:
    op.create_table(
        "tenants",
        _id(nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=True),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("suspended_reason", sa.String(500), nullable=True),
        sa.Column("stripe_customer_id", sa.String(255), nullable=True),
        _at("created_at"),
        _at("updated_at"),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("external_id", name="uq_tenants_external_id"),
        sa.CheckConstraint("status IN ('active', 'suspended')", name="ck_tenants_status"),
        sa.CheckConstraint("version >= 1", name="ck_tenants_version_positive"),
    )
    op.create_table(
        "plan_changes",
        sa.Column("id", SERIAL, nullable=False, autoincrement=True),
        _id("tenant_id", nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        _at("effective_at"),
        sa.PrimaryKeyConstraint("id", name="pk_plan_changes"),
        _tenant_fk("plan_changes"),
    )
    op.create_index(
        "ix_plan_changes_tenant_id_effective_at", "plan_changes", ["tenant_id", "effective_at"]
    )
    op.create_table(
        "api_keys",
        _id(nullable=False),
        _id("tenant_id", nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        _at("created_at"),
        _at("revoked_at", nullable=True),
        _at("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        _tenant_fk("api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])


def _create_usage() -> None:
    op.create_table(
        "usage_hourly",
        _id("tenant_id", nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        _at("hour_start"),
        sa.Column("quantity", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("overage", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("tenant_id", "metric", "hour_start", name="pk_usage_hourly"),
        _tenant_fk("usage_hourly"),
        sa.CheckConstraint("quantity >= 0", name="ck_usage_hourly_quantity_not_negative"),
        sa.CheckConstraint("overage >= 0", name="ck_usage_hourly_overage_not_negative"),
    )
    op.create_table(
        "usage_flushes",
        sa.Column("flush_id", sa.String(128), nullable=False),
        _at("applied_at"),
        sa.PrimaryKeyConstraint("flush_id", name="pk_usage_flushes"),
    )
    op.create_table(
        "usage_events",
        _id("tenant_id", nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        _at("occurred_at"),
        _at("received_at"),
        sa.PrimaryKeyConstraint("tenant_id", "event_id", name="pk_usage_events"),
        _tenant_fk("usage_events"),
        sa.CheckConstraint("quantity >= 0", name="ck_usage_events_quantity_not_negative"),
    )
    op.create_index(
        "ix_usage_events_tenant_id_occurred_at", "usage_events", ["tenant_id", "occurred_at"]
    )


def _create_invoices() -> None:
    op.create_table(
        "invoices",
        _id(nullable=False),
        _id("tenant_id", nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        _id("replaces_invoice_id", nullable=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="draft"),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("subtotal", AMOUNT, nullable=False),
        sa.Column("total", AMOUNT, nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("stripe_invoice_id", sa.String(255), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _at("created_at"),
        _at("updated_at"),
        _at("finalized_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_invoices"),
        _tenant_fk("invoices"),
        sa.ForeignKeyConstraint(
            ["replaces_invoice_id"],
            ["invoices.id"],
            name="fk_invoices_replaces_invoice_id_invoices",
        ),
        sa.UniqueConstraint(
            "tenant_id", "period", "version", name="uq_invoices_tenant_id_period_version"
        ),
        sa.UniqueConstraint("stripe_invoice_id", name="uq_invoices_stripe_invoice_id"),
        sa.CheckConstraint(
            "status IN ('draft', 'finalized', 'paid', 'void')", name="ck_invoices_status"
        ),
        sa.CheckConstraint("version >= 1", name="ck_invoices_version_positive"),
        sa.CheckConstraint("length(period) = 7", name="ck_invoices_period_format"),
    )
    # At most one invoice that is not void per (tenant, period).
    op.create_index(
        "uq_invoices_tenant_id_period_open",
        "invoices",
        ["tenant_id", "period"],
        unique=True,
        postgresql_where=NOT_VOID,
        sqlite_where=NOT_VOID,
    )
    op.create_table(
        "invoice_lines",
        _id(nullable=False),
        _id("invoice_id", nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", UNIT_PRICE, nullable=True),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_invoice_lines"),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.id"],
            name="fk_invoice_lines_invoice_id_invoices",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("invoice_id", "position", name="uq_invoice_lines_invoice_id_position"),
    )


def _create_stripe_and_notifications() -> None:
    op.create_table(
        "stripe_outbox",
        _id(nullable=False),
        _id("invoice_id", nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("idempotency_base", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _at("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_stripe_outbox"),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name="fk_stripe_outbox_invoice_id_invoices"
        ),
        sa.UniqueConstraint("invoice_id", "action", name="uq_stripe_outbox_invoice_id_action"),
        sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name="ck_stripe_outbox_state"),
        sa.CheckConstraint("attempts >= 0", name="ck_stripe_outbox_attempts_not_negative"),
    )
    op.create_index(
        "ix_stripe_outbox_state_next_attempt_at", "stripe_outbox", ["state", "next_attempt_at"]
    )
    op.create_table(
        "stripe_webhook_events",
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        _at("received_at"),
        sa.PrimaryKeyConstraint("event_id", name="pk_stripe_webhook_events"),
    )
    op.create_table(
        "notifications_sent",
        _id("tenant_id", nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        _at("sent_at"),
        sa.PrimaryKeyConstraint("tenant_id", "period", "threshold", name="pk_notifications_sent"),
        _tenant_fk("notifications_sent"),
    )
