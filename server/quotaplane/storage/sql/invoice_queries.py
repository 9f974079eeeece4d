"""Invoice queries for the admin RPCs: keyset pages with filters, one invoice, and voiding.

Invoices are read with the invoice ledger's own row loader (``load_invoice``), so an invoice
looks the same whichever RPC returns it. Pages are ordered newest period first, then newest
created, then id (all descending) and continue strictly after the cursor's row.

Voiding is a compare-and-set on the status (``UPDATE ... WHERE status = :from_status``) so a
concurrent finalize, payment or void is never overwritten, and it only touches invoices with no
row in the Stripe outbox: the outbox worker pushes whatever it finds there, and voiding an
invoice that Stripe has (or is about to have) must happen in Stripe.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.billing.ports import InvoiceFilter, StoredInvoice
from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.domain.paging import MAX_PAGE_SIZE, Cursor
from quotaplane.domain.windows import Period
from quotaplane.storage.sql.access import SqlStore, utc_now
from quotaplane.storage.sql.invoices import load_invoice, period_rows
from quotaplane.storage.sql.tables import invoices, stripe_outbox


class SqlInvoiceQueries(SqlStore):
    _what = "invoice ledger"

    """InvoiceQueries on Postgres or SQLite (SQLAlchemy async)."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def list_page(
        self, *, after: Cursor | None, size: int, filters: InvoiceFilter
    ) -> list[StoredInvoice]:
        c = invoices.c
        query = (
            sa.select(invoices)
            .order_by(c.period.desc(), c.created_at.desc(), c.id.desc())
            .limit(max(1, min(size, MAX_PAGE_SIZE + 1)))
        )
        if after is not None:
            query = query.where(
                sa.or_(
                    c.period < after.sort,
                    sa.and_(c.period == after.sort, c.created_at < after.created_at),
                    sa.and_(
                        c.period == after.sort, c.created_at == after.created_at, c.id < after.id
                    ),
                )
            )
        if filters.tenant_id is not None:
            query = query.where(c.tenant_id == filters.tenant_id)
        if filters.period is not None:
            query = query.where(c.period == filters.period)
        async with self._connection() as conn:
            rows = (await conn.execute(query)).mappings().all()
            return [await load_invoice(conn, row) for row in rows]

    async def get(self, invoice_id: str) -> StoredInvoice | None:
        async with self._connection() as conn:
            return await _get(conn, invoice_id)

    async def period_invoices(self, tenant_id: str, period: Period) -> list[StoredInvoice]:
        async with self._connection() as conn:
            rows = await period_rows(conn, tenant_id, str(period), lock=False)
            return [await load_invoice(conn, row) for row in rows]

    async def queued_for_stripe(self, invoice_id: str) -> bool:
        query = sa.select(stripe_outbox.c.id).where(stripe_outbox.c.invoice_id == invoice_id)
        async with self._connection() as conn:
            return (await conn.execute(query.limit(1))).first() is not None

    async def void(self, invoice_id: str, *, from_status: str) -> StoredInvoice | None:
        not_queued = ~sa.exists().where(stripe_outbox.c.invoice_id == invoices.c.id)
        async with self._transaction() as conn:
            changed = await conn.execute(
                invoices.update()
                .where(
                    invoices.c.id == invoice_id,
                    invoices.c.status == from_status,
                    not_queued,
                )
                .values(status=InvoiceStatus.VOID, updated_at=self._clock())
                .returning(invoices.c.id)
            )
            if changed.first() is None:
                return None
            return await _get(conn, invoice_id)


async def _get(conn: AsyncConnection, invoice_id: str) -> StoredInvoice | None:
    row = (
        (await conn.execute(sa.select(invoices).where(invoices.c.id == invoice_id)))
        .mappings()
        .first()
    )
    return None if row is None else await load_invoice(conn, row)
