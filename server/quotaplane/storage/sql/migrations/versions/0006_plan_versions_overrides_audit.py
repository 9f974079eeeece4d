"""Plans as versions, per-tenant overrides, the audit trail, and each invoice's plans version.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

``plan_versions`` holds every applied plans document (replicas poll it by ``applied_at``);
``tenants.overrides`` a tenant's partial plan entry (and ``plan_changes.overrides`` its history,
for proration); ``audit_events`` every AdminService
mutation with the credential's name; ``invoices.plan_version`` the plans version an invoice
was priced with.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _at(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "plan_versions",
        sa.Column("version", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("applied_by", sa.String(64), nullable=False),
        _at("applied_at"),
        sa.Column("note", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_plan_versions"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
    )
    op.create_index("ix_plan_versions_applied_at", "plan_versions", ["applied_at"])
    op.create_table(
        "audit_events",
        sa.Column("id", SERIAL, nullable=False, autoincrement=True),
        _at("occurred_at"),
        sa.Column("credential", sa.String(64), nullable=False),
        sa.Column("method", sa.String(128), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("result", sa.String(32), nullable=False),
        sa.Column("message", sa.String(1000), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])
    op.create_index("ix_audit_events_tenant_id_id", "audit_events", ["tenant_id", "id"])
    op.add_column("tenants", sa.Column("overrides", sa.JSON(), nullable=True))
    op.add_column("plan_changes", sa.Column("overrides", sa.JSON(), nullable=True))
    op.add_column("invoices", sa.Column("plan_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invoices") as batch:
        batch.drop_column("plan_version")
    with op.batch_alter_table("plan_changes") as batch:
        batch.drop_column("overrides")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("overrides")
    op.drop_index("ix_audit_events_tenant_id_id", table_name="audit_events")
    op.drop_index("ix_audit_events_occurred_at", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index("ix_plan_versions_applied_at", table_name="plan_versions")
    op.drop_table("plan_versions")
