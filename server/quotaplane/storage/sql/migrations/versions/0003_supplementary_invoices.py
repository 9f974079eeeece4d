"""Supplementary invoices: late usage of a frozen period is billed on invoices of its own.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

A period had one invoice that is not void (``uq_invoices_tenant_id_period_open``). Usage
admitted after that invoice froze is late usage of the period and goes on a supplementary
invoice (``domain/billing/late_usage.py``): ``supplement`` numbers the period's invoices (0 for
the primary one) and ``supplements_invoice_id`` links a supplementary invoice to the one it
supplements. Uniqueness becomes one invoice per (tenant, period, supplement) that is not void,
so concurrent GenerateInvoice calls still create each invoice once, plus at most one draft per
(tenant, period).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_VOID = sa.text("status <> 'void'")
DRAFT = sa.text("status = 'draft'")


def upgrade() -> None:
    op.drop_index("uq_invoices_tenant_id_period_open", table_name="invoices")
    with op.batch_alter_table("invoices") as batch:
        batch.add_column(sa.Column("supplement", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("supplements_invoice_id", sa.String(36), nullable=True))
        batch.create_foreign_key(
            "fk_invoices_supplements_invoice_id_invoices",
            "invoices",
            ["supplements_invoice_id"],
            ["id"],
        )
        # The metadata's naming convention adds the ck_<table>_ prefix.
        batch.create_check_constraint("supplement_not_negative", "supplement >= 0")
    op.create_index(
        "uq_invoices_tenant_id_period_supplement_open",
        "invoices",
        ["tenant_id", "period", "supplement"],
        unique=True,
        postgresql_where=NOT_VOID,
        sqlite_where=NOT_VOID,
    )
    op.create_index(
        "uq_invoices_tenant_id_period_draft",
        "invoices",
        ["tenant_id", "period"],
        unique=True,
        postgresql_where=DRAFT,
        sqlite_where=DRAFT,
    )


def downgrade() -> None:
    # Only possible while no period has a supplementary invoice (the old index refuses them).
    op.drop_index("uq_invoices_tenant_id_period_draft", table_name="invoices")
    op.drop_index("uq_invoices_tenant_id_period_supplement_open", table_name="invoices")
    with op.batch_alter_table("invoices") as batch:
        batch.drop_constraint(op.f("ck_invoices_supplement_not_negative"), type_="check")
        batch.drop_constraint("fk_invoices_supplements_invoice_id_invoices", type_="foreignkey")
        batch.drop_column("supplements_invoice_id")
        batch.drop_column("supplement")
    op.create_index(
        "uq_invoices_tenant_id_period_open",
        "invoices",
        ["tenant_id", "period"],
        unique=True,
        postgresql_where=NOT_VOID,
        sqlite_where=NOT_VOID,
    )
