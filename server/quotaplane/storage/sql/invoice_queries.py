"""Invoice queries for the admin RPCs: keyset pages with filters, one invoice, and voiding.

Invoices are read with the invoice ledger's own row loader (``invoices._load``), so an invoice
looks the same whichever RPC returns it. Pages are ordered newest period first, then newest
created, then id (all descending) and continue strictly after the cursor's row.

Voiding is a compare-and-set on the status (``UPDATE ... WHERE status = :from_status``) so a
concurrent finalize, payment or void is never overwritten. When the invoice was queued for
Stripe (a ``push`` row in the outbox), a ``void`` row is queued in the same transaction; the
outbox worker voids the Stripe invoice with an idempotency key derived from the invoice id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.admin_ports import InvoiceFilter
from quotaplane.domain.billing_ports import StoredInvoice
from quotaplane.domain.paging import MAX_PAGE_SIZE, Cursor
from quotaplane.storage.sql.invoices import PUSH, _load
from quotaplane.storage.sql.ledger import database_errors, dialect_insert, utc_now
from quotaplane.storage.sql.tables import invoices, stripe_outbox

VOID = "void"


class SqlInvoiceQueries:
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
        with database_errors("invoice ledger"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
                return [await _load(conn, row) for row in rows]

    async def get(self, invoice_id: str) -> StoredInvoice | None:
        with database_errors("invoice ledger"):
            async with self._engine.connect() as conn:
                return await _get(conn, invoice_id)

    async def void(self, invoice_id: str, *, from_status: str) -> StoredInvoice | None:
        now = self._clock()
        with database_errors("invoice ledger"):
            async with self._engine.begin() as conn:
                changed = await conn.execute(
                    invoices.update()
                    .where(invoices.c.id == invoice_id, invoices.c.status == from_status)
                    .values(status=VOID, updated_at=now)
                    .returning(invoices.c.id)
                )
                if changed.first() is None:
                    return None
                if await _queued_for_stripe(conn, invoice_id):
                    await _enqueue_void(conn, invoice_id, now)
                return await _get(conn, invoice_id)


async def _get(conn: AsyncConnection, invoice_id: str) -> StoredInvoice | None:
    row = (
        (await conn.execute(sa.select(invoices).where(invoices.c.id == invoice_id)))
        .mappings()
        .first()
    )
    return None if row is None else await _load(conn, row)


async def _queued_for_stripe(conn: AsyncConnection, invoice_id: str) -> bool:
    query = sa.select(stripe_outbox.c.id).where(
        stripe_outbox.c.invoice_id == invoice_id, stripe_outbox.c.action == PUSH
    )
    return (await conn.execute(query)).first() is not None


async def _enqueue_void(conn: AsyncConnection, invoice_id: str, now: datetime) -> None:
    statement = (
        dialect_insert(conn, stripe_outbox)
        .values(
            id=str(uuid.uuid4()),
            invoice_id=invoice_id,
            action=VOID,
            idempotency_base=f"qp-invoice-void-{invoice_id}",
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["invoice_id", "action"])
    )
    await conn.execute(statement)
