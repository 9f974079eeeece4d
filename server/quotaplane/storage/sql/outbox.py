"""SQL Stripe outbox: leasing due push jobs, and the Stripe ids and errors the ledger keeps.

A worker leases a due row by moving its ``next_attempt_at`` forward by the lease in one
conditional UPDATE (the row's old ``next_attempt_at`` must still be there): of several
replicas, exactly one wins each row, and a worker that dies leaves the row to be leased again
when the lease ends. The lease's end is also its fence: a completion (done, retry, fail) or
an extension updates the row only while it still carries the caller's lease end, so a worker
whose lease ran out and was taken over changes nothing. Stripe ids are written as soon as they
exist and never overwritten.
Webhook events are recorded by id (primary key) in the transaction that applies them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.billing.payment_ports import PaymentEvent, PushJob
from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.storage.sql.access import SqlStore, dialect_insert, utc_now
from quotaplane.storage.sql.invoices import PUSH, load_invoice
from quotaplane.storage.sql.tables import invoices, stripe_outbox, stripe_webhook_events, tenants


async def store_customer(conn: AsyncConnection, tenant_id: str, customer_id: str) -> None:
    """Keep the tenant's Stripe customer id; the first one stored stays."""
    await conn.execute(
        tenants.update()
        .where(tenants.c.id == tenant_id, tenants.c.stripe_customer_id.is_(None))
        .values(stripe_customer_id=customer_id)
    )


class SqlPushOutbox(SqlStore):
    """PushOutbox on Postgres or SQLite."""

    _what = "stripe outbox"

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def claim_due(self, *, limit: int, lease_seconds: float) -> list[PushJob]:
        now = self._clock()
        due = (
            sa.select(stripe_outbox.c.id, stripe_outbox.c.next_attempt_at)
            .where(
                stripe_outbox.c.action == PUSH,  # the one action this worker performs
                stripe_outbox.c.state == "pending",
                stripe_outbox.c.next_attempt_at <= now,
            )
            .order_by(stripe_outbox.c.next_attempt_at)
            .limit(limit)
        )
        return await self._lease_each(
            due, lambda outbox_id, seen_at: self._lease(outbox_id, seen_at, now, lease_seconds)
        )

    async def set_customer(self, tenant_id: str, customer_id: str) -> None:
        async with self._transaction() as conn:
            await store_customer(conn, tenant_id, customer_id)

    async def set_remote_invoice(self, invoice_id: str, remote_id: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                invoices.update()
                .where(invoices.c.id == invoice_id, invoices.c.stripe_invoice_id.is_(None))
                .values(stripe_invoice_id=remote_id, updated_at=self._clock())
            )

    async def extend(self, job: PushJob, *, lease_seconds: float) -> PushJob | None:
        now = self._clock()
        until = now + timedelta(seconds=lease_seconds)
        async with self._transaction() as conn:
            if not await self._set_row(conn, job, next_attempt_at=until, updated_at=now):
                return None
        return dataclasses.replace(job, lease_until=until)

    async def done(self, job: PushJob) -> bool:
        now = self._clock()
        async with self._transaction() as conn:
            if not await self._set_row(conn, job, state="done", last_error=None, updated_at=now):
                return False
            await self._set_invoice_error(conn, job, None, now)
        return True

    async def retry_later(self, job: PushJob, *, delay_seconds: float, error: str) -> bool:
        now = self._clock()
        async with self._transaction() as conn:
            return await self._set_row(
                conn,
                job,
                attempts=job.attempts + 1,
                next_attempt_at=now + timedelta(seconds=delay_seconds),
                last_error=error,
                updated_at=now,
            )

    async def fail(self, job: PushJob, error: str) -> bool:
        now = self._clock()
        async with self._transaction() as conn:
            failed = await self._set_row(
                conn,
                job,
                state="failed",
                attempts=job.attempts + 1,
                last_error=error,
                updated_at=now,
            )
            if not failed:
                return False
            await self._set_invoice_error(conn, job, error, now)
        return True

    async def apply_event(self, event: PaymentEvent) -> bool:
        now = self._clock()
        async with self._transaction() as conn:
            seen = (
                dialect_insert(conn, stripe_webhook_events)
                .values(event_id=event.id, type=event.type, received_at=now)
                .on_conflict_do_nothing(index_elements=["event_id"])
                .returning(stripe_webhook_events.c.event_id)
            )
            if (await conn.execute(seen)).first() is None:
                return False
            if event.type == "invoice.paid" and event.remote_invoice_id:
                await conn.execute(
                    invoices.update()
                    .where(
                        invoices.c.stripe_invoice_id == event.remote_invoice_id,
                        invoices.c.status == InvoiceStatus.FINALIZED,
                    )
                    .values(status=InvoiceStatus.PAID, updated_at=now)
                )
        return True

    async def _lease(
        self, outbox_id: str, seen_at: datetime, now: datetime, lease_seconds: float
    ) -> PushJob | None:
        claim = (
            stripe_outbox.update()
            .where(
                stripe_outbox.c.id == outbox_id,
                stripe_outbox.c.state == "pending",
                stripe_outbox.c.next_attempt_at == seen_at,
            )
            .values(next_attempt_at=now + timedelta(seconds=lease_seconds), updated_at=now)
            .returning(
                stripe_outbox.c.invoice_id,
                stripe_outbox.c.idempotency_base,
                stripe_outbox.c.attempts,
                stripe_outbox.c.next_attempt_at,
            )
        )
        async with self._transaction() as conn:
            won = (await conn.execute(claim)).first()
            if won is None:
                return None  # another worker leased it first
            return await self._job(conn, outbox_id, won)

    async def _job(self, conn: AsyncConnection, outbox_id: str, won: sa.Row[Any]) -> PushJob:
        invoice_id, base, attempts = won.invoice_id, won.idempotency_base, won.attempts
        row = (
            (await conn.execute(sa.select(invoices).where(invoices.c.id == invoice_id)))
            .mappings()
            .one()
        )
        invoice = await load_invoice(conn, row)
        tenant = (
            await conn.execute(
                sa.select(tenants.c.name, tenants.c.stripe_customer_id).where(
                    tenants.c.id == invoice.tenant_id
                )
            )
        ).one()
        return PushJob(
            outbox_id,
            invoice,
            tenant.name,
            tenant.stripe_customer_id,
            base,
            attempts,
            lease_until=won.next_attempt_at,  # as stored, so the fence compares equal
        )

    @staticmethod
    async def _set_row(conn: AsyncConnection, job: PushJob, **values: object) -> bool:
        """Update the job's row only while it is pending under the job's lease."""
        fenced = stripe_outbox.update().where(
            stripe_outbox.c.id == job.outbox_id,
            stripe_outbox.c.state == "pending",
            stripe_outbox.c.next_attempt_at == job.lease_until,
        )
        return (await conn.execute(fenced.values(**values))).rowcount == 1

    @staticmethod
    async def _set_invoice_error(
        conn: AsyncConnection, job: PushJob, error: str | None, now: datetime
    ) -> None:
        await conn.execute(
            invoices.update()
            .where(invoices.c.id == job.invoice.id)
            .values(last_error=error, updated_at=now)
        )
