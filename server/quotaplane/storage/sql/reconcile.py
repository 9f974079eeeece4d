"""The ledger's side of ``quotaplane billing reconcile``: tenants, the period's invoices meant
for Stripe, and the units booked per tenant and metric in a period."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.billing.reconcile import LedgerInvoice, LedgerTenant
from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.domain.windows import Period
from quotaplane.storage.sql.access import SqlStore
from quotaplane.storage.sql.tables import invoices, stripe_outbox, tenants, usage_hourly

_BILLED = (InvoiceStatus.FINALIZED.value, InvoiceStatus.PAID.value)


class SqlReconcileQueries(SqlStore):
    """ReconcileLedger on Postgres or SQLite."""

    _what = "ledger"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def tenants(self) -> list[LedgerTenant]:
        query = sa.select(
            tenants.c.id, tenants.c.name, tenants.c.plan, tenants.c.stripe_customer_id
        ).order_by(tenants.c.name, tenants.c.id)
        async with self._connection() as conn:
            rows = (await conn.execute(query)).all()
        return [LedgerTenant(r.id, r.name, r.plan, r.stripe_customer_id) for r in rows]

    async def invoices_for_stripe(self, period: Period) -> list[LedgerInvoice]:
        queued = sa.exists().where(stripe_outbox.c.invoice_id == invoices.c.id)
        query = (
            sa.select(
                invoices.c.id,
                invoices.c.tenant_id,
                invoices.c.total_minor,
                invoices.c.stripe_invoice_id,
            )
            .where(
                invoices.c.period == str(period),
                invoices.c.status.in_(_BILLED),
                sa.or_(invoices.c.stripe_invoice_id.is_not(None), queued),
            )
            .order_by(invoices.c.tenant_id, invoices.c.version)
        )
        async with self._connection() as conn:
            rows = (await conn.execute(query)).all()
        return [LedgerInvoice(r.id, r.tenant_id, r.total_minor, r.stripe_invoice_id) for r in rows]

    async def units(self, tenant_id: str, metric: str, period: Period) -> int:
        query = sa.select(sa.func.coalesce(sa.func.sum(usage_hourly.c.quantity), 0)).where(
            usage_hourly.c.tenant_id == tenant_id,
            usage_hourly.c.metric == metric,
            usage_hourly.c.hour_start >= period.start,
            usage_hourly.c.hour_start < period.end,
        )
        async with self._connection() as conn:
            return int((await conn.execute(query)).scalar_one())
