"""The period close: runs under a lease in the ledger, and the tenants each run closed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

``billing_close_runs`` holds one row per period: the run number, its state and the lease of
the attempt doing it (any replica, or ``quotaplane billing close``); ``billing_close_tenants``
the tenants a run has closed, so an attempt that died is resumed by the next one after its
last tenant.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "billing_close_runs",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(36), nullable=False),
        _at("lease_until"),
        _at("started_at"),
        _at("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("period", name="pk_billing_close_runs"),
        # The metadata's naming convention adds the ck_<table>_ prefix.
        sa.CheckConstraint("state IN ('running', 'done')", name="state"),
        sa.CheckConstraint("run >= 1", name="run_positive"),
    )
    op.create_table(
        "billing_close_tenants",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("invoices_closed", sa.Integer(), nullable=False),
        _at("closed_at"),
        sa.PrimaryKeyConstraint("period", "run", "tenant_id", name="pk_billing_close_tenants"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_billing_close_tenants_tenant_id_tenants"
        ),
        sa.CheckConstraint("invoices_closed >= 0", name="invoices_closed_not_negative"),
    )


def downgrade() -> None:
    op.drop_table("billing_close_tenants")
    op.drop_table("billing_close_runs")
