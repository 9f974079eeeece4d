"""The ledger's schema as SQLAlchemy Core tables: the one description the code queries against.

The Alembic revisions under ``migrations/versions`` build exactly this schema on Postgres and
SQLite; a test compares the two after ``upgrade head`` on both dialects, so a change here
without a migration (or the reverse) fails CI. The column types and helpers (``UtcDateTime``,
``Money``, the naming convention) are in ``columns.py``.
"""

from __future__ import annotations

import sqlalchemy as sa

from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.storage.sql.columns import (
    INVOICE_STATUSES,
    NAMING_CONVENTION,
    TENANT_STATUSES,
    UtcDateTime,
    amount,
    at,
    id_column,
    serial,
    tenant_fk,
    unit_price,
)

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

tenants = sa.Table(
    "tenants",
    metadata,
    id_column(primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("external_id", sa.String(200), nullable=True, unique=True),
    sa.Column("plan", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),
    sa.Column("suspended_reason", sa.String(500), nullable=True),
    sa.Column("stripe_customer_id", sa.String(255), nullable=True),
    at("created_at"),
    at("updated_at"),
    # Bumped on every change; replicas compare it to refresh their tenant caches.
    sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
    # A partial plan entry merged over the plan (domain/plans/overrides.py); strings only.
    sa.Column("overrides", sa.JSON(none_as_null=True), nullable=True),
    sa.CheckConstraint(f"status IN ({TENANT_STATUSES})", name="status"),
    sa.CheckConstraint("version >= 1", name="version_positive"),
    sa.Index("ix_tenants_updated_at", "updated_at"),
)

plan_changes = sa.Table(
    "plan_changes",
    metadata,
    sa.Column("id", serial(), primary_key=True, autoincrement=True),
    tenant_fk(),
    sa.Column("plan", sa.String(64), nullable=False),
    at("effective_at"),
    # The tenant's overrides from then on (null: none), so invoices prorate them like plans.
    sa.Column("overrides", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_plan_changes_tenant_id_effective_at", "tenant_id", "effective_at"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    id_column(primary_key=True),
    tenant_fk(index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # SHA-256, hex
    at("created_at"),
    at("revoked_at", nullable=True),
    at("last_used_at", nullable=True),
    # The key caches of every replica poll by these two every half second.
    sa.Index("ix_api_keys_created_at", "created_at"),
    sa.Index("ix_api_keys_revoked_at", "revoked_at"),
)

usage_hourly = sa.Table(
    "usage_hourly",
    metadata,
    tenant_fk(primary_key=True),
    sa.Column("metric", sa.String(64), primary_key=True),
    sa.Column("hour_start", UtcDateTime(), primary_key=True),
    sa.Column("quantity", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("overage", sa.BigInteger(), nullable=False, server_default="0"),
    sa.CheckConstraint("quantity >= 0", name="quantity_not_negative"),
    sa.CheckConstraint("overage >= 0", name="overage_not_negative"),
)

# One row per applied usage flush: inserting the same flush id twice violates the primary
# key, so a flush replayed after a crash is refused as a whole instead of counted twice.
usage_flushes = sa.Table(
    "usage_flushes",
    metadata,
    sa.Column("flush_id", sa.String(128), primary_key=True),
    at("applied_at"),
)

# Raw RecordUsage events; the primary key (tenant_id, event_id) is the dedup rule.
usage_events = sa.Table(
    "usage_events",
    metadata,
    tenant_fk(primary_key=True),
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("quantity", sa.BigInteger(), nullable=False),
    at("occurred_at"),
    at("received_at"),
    sa.CheckConstraint("quantity >= 0", name="quantity_not_negative"),
    sa.Index("ix_usage_events_tenant_id_occurred_at", "tenant_id", "occurred_at"),
)

invoices = sa.Table(
    "invoices",
    metadata,
    id_column(primary_key=True),
    tenant_fk(),
    sa.Column("period", sa.String(7), nullable=False),  # 'YYYY-MM', UTC calendar month
    sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
    # A voided invoice regenerated for the same period: version + 1, pointing at the old one.
    id_column("replaces_invoice_id", nullable=True),
    # Late usage (domain/billing/late_usage.py): 0 for the period's primary invoice, 1, 2, ...
    # for the supplementary invoices after it, each linked to the invoice it supplements.
    sa.Column("supplement", sa.Integer(), nullable=False, server_default="0"),
    id_column("supplements_invoice_id", nullable=True),
    sa.Column("status", sa.String(16), nullable=False, server_default=InvoiceStatus.DRAFT.value),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("subtotal", amount(), nullable=False),
    sa.Column("total", amount(), nullable=False),
    sa.Column("total_minor", sa.BigInteger(), nullable=False),
    sa.Column("stripe_invoice_id", sa.String(255), nullable=True, unique=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    at("created_at"),
    at("updated_at"),
    at("finalized_at", nullable=True),
    # The plans version the invoice was priced with (null: priced before plans had versions).
    sa.Column("plan_version", sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(["replaces_invoice_id"], ["invoices.id"]),
    sa.ForeignKeyConstraint(["supplements_invoice_id"], ["invoices.id"]),
    sa.UniqueConstraint("tenant_id", "period", "version"),
    sa.CheckConstraint(f"status IN ({INVOICE_STATUSES})", name="status"),
    sa.CheckConstraint("version >= 1", name="version_positive"),
    sa.CheckConstraint("length(period) = 7", name="period_format"),
    sa.CheckConstraint("supplement >= 0", name="supplement_not_negative"),
    # One primary and one n-th supplementary invoice per (tenant, period) that is not void:
    # GenerateInvoice's idempotency, also for concurrent supplementary invoices.
    sa.Index(
        "uq_invoices_tenant_id_period_supplement_open",
        "tenant_id",
        "period",
        "supplement",
        unique=True,
        postgresql_where=sa.text("status <> 'void'"),
        sqlite_where=sa.text("status <> 'void'"),
    ),
    # At most one draft per (tenant, period): the one that GenerateInvoice regenerates.
    sa.Index(
        "uq_invoices_tenant_id_period_draft",
        "tenant_id",
        "period",
        unique=True,
        postgresql_where=sa.text("status = 'draft'"),
        sqlite_where=sa.text("status = 'draft'"),
    ),
)

invoice_lines = sa.Table(
    "invoice_lines",
    metadata,
    id_column(primary_key=True),
    sa.Column(
        "invoice_id",
        sa.String(36),
        sa.ForeignKey("invoices.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("description", sa.String(500), nullable=False),
    sa.Column("quantity", sa.BigInteger(), nullable=False),
    sa.Column("unit_price", unit_price(), nullable=True),
    sa.Column("amount", amount(), nullable=False),
    sa.Column("amount_minor", sa.BigInteger(), nullable=False),
    sa.Column("details", sa.JSON(), nullable=True),  # tier breakdown, proration; no floats
    sa.UniqueConstraint("invoice_id", "position"),
)

stripe_outbox = sa.Table(
    "stripe_outbox",
    metadata,
    id_column(primary_key=True),
    sa.Column("invoice_id", sa.String(36), sa.ForeignKey("invoices.id"), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),  # push | void | ...
    sa.Column("idempotency_base", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    at("next_attempt_at"),
    sa.Column("last_error", sa.Text(), nullable=True),
    at("created_at"),
    at("updated_at"),
    sa.UniqueConstraint("invoice_id", "action"),
    sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name="state"),
    sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    sa.Index("ix_stripe_outbox_state_next_attempt_at", "state", "next_attempt_at"),
)

# Stripe delivers webhooks at least once; the event id as primary key makes handling once.
stripe_webhook_events = sa.Table(
    "stripe_webhook_events",
    metadata,
    sa.Column("event_id", sa.String(255), primary_key=True),
    sa.Column("type", sa.String(128), nullable=False),
    at("received_at"),
)

# Quota threshold notifications (80%/100% of a monthly quota): an outbox of webhook deliveries.
# The UNIQUE key makes a threshold notify once per period, whichever replica saw it first.
quota_notifications = sa.Table(
    "quota_notifications",
    metadata,
    id_column(primary_key=True),
    tenant_fk(),
    sa.Column("period", sa.String(7), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("threshold", sa.Integer(), nullable=False),  # percent of the quota
    sa.Column("used", sa.BigInteger(), nullable=False),
    sa.Column("quota", sa.BigInteger(), nullable=False),
    at("occurred_at"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    at("next_attempt_at", nullable=True),
    at("delivered_at", nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.UniqueConstraint("tenant_id", "period", "metric", "threshold"),
    sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    sa.Index(
        "ix_quota_notifications_delivered_at_next_attempt_at", "delivered_at", "next_attempt_at"
    ),
)

# Stripe Billing Meters (services/meter_reporter.py): per (tenant, metric, hour) of
# usage_hourly, the units already queued as meter events.
meter_reports = sa.Table(
    "meter_reports",
    metadata,
    tenant_fk(primary_key=True),
    sa.Column("metric", sa.String(64), primary_key=True),
    sa.Column("hour_start", UtcDateTime(), primary_key=True),
    sa.Column("reported", sa.BigInteger(), nullable=False),
    at("reported_at"),  # when the last increment was queued: one batch per interval
    sa.CheckConstraint("reported >= 0", name="reported_not_negative"),
)

# One meter event per queued increment; rows stay once sent ('done'), so an event is never
# sent again after Stripe's 24 h identifier dedup window.
meter_outbox = sa.Table(
    "meter_outbox",
    metadata,
    id_column(primary_key=True),
    tenant_fk(),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("hour_start", UtcDateTime(), nullable=False),
    sa.Column("event_name", sa.String(100), nullable=False),
    sa.Column("quantity", sa.BigInteger(), nullable=False),
    sa.Column("identifier", sa.String(100), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    at("next_attempt_at"),
    at("first_attempt_at", nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    at("created_at"),
    at("updated_at"),
    sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name="state"),
    sa.CheckConstraint("quantity > 0", name="quantity_positive"),
    sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    sa.Index("ix_meter_outbox_state_next_attempt_at", "state", "next_attempt_at"),
    sa.Index("ix_meter_outbox_tenant_id_hour_start", "tenant_id", "hour_start"),
)

# The period close (services/period_close.py): one run at a time per period, under a lease in
# the ledger, and each tenant it closed, so a run that died resumes after the last one. A
# finished period run again by hand (``quotaplane billing close``) is the next ``run`` number.
billing_close_runs = sa.Table(
    "billing_close_runs",
    metadata,
    sa.Column("period", sa.String(7), primary_key=True),
    sa.Column("run", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    id_column("owner", nullable=False),  # the attempt holding the lease (a UUID per attempt)
    at("lease_until"),
    at("started_at"),
    at("finished_at", nullable=True),
    sa.CheckConstraint("state IN ('running', 'done')", name="state"),
    sa.CheckConstraint("run >= 1", name="run_positive"),
)

billing_close_tenants = sa.Table(
    "billing_close_tenants",
    metadata,
    sa.Column("period", sa.String(7), primary_key=True),
    sa.Column("run", sa.Integer(), primary_key=True),
    sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("outcome", sa.String(32), nullable=False),  # closed | unchanged | ...
    sa.Column("invoices_closed", sa.Integer(), nullable=False),
    at("closed_at"),
    sa.CheckConstraint("invoices_closed >= 0", name="invoices_closed_not_negative"),
)

plan_versions = sa.Table(
    "plan_versions",
    metadata,
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("document", sa.Text(), nullable=False),  # the plans YAML as applied
    sa.Column("digest", sa.String(64), nullable=False),  # SHA-256 of what it says
    sa.Column("source", sa.String(500), nullable=False),
    sa.Column("applied_by", sa.String(64), nullable=False),
    at("applied_at"),
    sa.Column("note", sa.String(200), nullable=False),
    sa.CheckConstraint("version >= 1", name="version_positive"),
    sa.Index("ix_plan_versions_applied_at", "applied_at"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", serial(), primary_key=True, autoincrement=True),
    at("occurred_at"),
    sa.Column("credential", sa.String(64), nullable=False),  # the token's role, never a secret
    sa.Column("method", sa.String(128), nullable=False),
    sa.Column("tenant_id", sa.String(36), nullable=True),
    sa.Column("request", sa.Text(), nullable=False),  # JSON, secrets redacted
    sa.Column("result", sa.String(32), nullable=False),  # OK or the gRPC status code name
    sa.Column("message", sa.String(1000), nullable=False),
    sa.Index("ix_audit_events_occurred_at", "occurred_at"),
    sa.Index("ix_audit_events_tenant_id_id", "tenant_id", "id"),
)
