"""Quota threshold notifications become an outbox; indexes for the replicas' cache polling.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

``notifications_sent`` (tenant, period, threshold) could not tell metrics apart nor hold a
delivery state; ``quota_notifications`` keeps one row per (tenant, period, metric, threshold)
with its delivery attempts. Replicas poll tenants by ``updated_at`` and API keys by
``created_at``/``revoked_at`` every half second: those columns get indexes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.drop_table("notifications_sent")
    op.create_table(
        "quota_notifications",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=False),
        _at("occurred_at"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _at("next_attempt_at", nullable=True),
        _at("delivered_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_quota_notifications"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_quota_notifications_tenant_id_tenants"
        ),
        sa.UniqueConstraint(
            "tenant_id",
            "period",
            "metric",
            "threshold",
            name="uq_quota_notifications_tenant_id_period_metric_threshold",
        ),
        # The metadata's naming convention adds the ck_<table>_ prefix.
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    )
    op.create_index(
        "ix_quota_notifications_delivered_at_next_attempt_at",
        "quota_notifications",
        ["delivered_at", "next_attempt_at"],
    )
    op.create_index("ix_tenants_updated_at", "tenants", ["updated_at"])
    op.create_index("ix_api_keys_created_at", "api_keys", ["created_at"])
    op.create_index("ix_api_keys_revoked_at", "api_keys", ["revoked_at"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_revoked_at", table_name="api_keys")
    op.drop_index("ix_api_keys_created_at", table_name="api_keys")
    op.drop_index("ix_tenants_updated_at", table_name="tenants")
    op.drop_index(
        "ix_quota_notifications_delivered_at_next_attempt_at", table_name="quota_notifications"
    )
    op.drop_table("quota_notifications")
    op.create_table(
        "notifications_sent",
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        _at("sent_at"),
        sa.PrimaryKeyConstraint("tenant_id", "period", "threshold", name="pk_notifications_sent"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_notifications_sent_tenant_id_tenants"
        ),
    )
