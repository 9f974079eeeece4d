"""SQL side of Stripe Billing Meters: reported marks and the meter event outbox.

``queue_increments`` reads, for the metered plans' tenants, every ``usage_hourly`` row whose
booked units exceed its ``meter_reports`` mark (and whose last batch is at least one
interval old, so several replicas ticking in one interval still make one batch) and, in one
transaction, moves each mark conditionally (INSERT ... ON CONFLICT DO NOTHING for a new mark,
UPDATE ... WHERE reported = the value read for an existing one) and queues the difference as
one ``meter_outbox`` row.
A mark another replica moved first updates nothing, and its row is skipped: an increment is
queued once. Rows are taken in primary-key order so concurrent replicas cannot deadlock.

Leases and their fence are the invoice outbox's (``outbox.py``): a worker leases a row by
moving its ``next_attempt_at`` forward, and completes it only while the row still carries
that lease's end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.billing.meters import MeterJob, meter_identifier
from quotaplane.storage.sql.access import SqlStore, dialect_insert, utc_now
from quotaplane.storage.sql.outbox import store_customer
from quotaplane.storage.sql.tables import meter_outbox, meter_reports, tenants, usage_hourly


class SqlMeterOutbox(SqlStore):
    """MeterOutbox on Postgres or SQLite."""

    _what = "meter outbox"

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def queue_increments(
        self, metered: Mapping[str, Mapping[str, str]], *, since: datetime, every: timedelta
    ) -> int:
        if not metered:
            return 0
        now = self._clock()
        queued = 0
        async with self._transaction() as conn:
            for row in await _unreported(conn, list(metered), since, now - every):
                event_name = metered[row.plan].get(row.metric)
                if event_name and await _move_mark(conn, row, now):
                    await conn.execute(meter_outbox.insert().values(_queued(row, event_name, now)))
                    queued += 1
        return queued

    async def claim_due(self, *, limit: int, lease_seconds: float) -> list[MeterJob]:
        now = self._clock()
        due = (
            sa.select(meter_outbox.c.id, meter_outbox.c.next_attempt_at)
            .where(meter_outbox.c.state == "pending", meter_outbox.c.next_attempt_at <= now)
            .order_by(meter_outbox.c.next_attempt_at, meter_outbox.c.id)
            .limit(limit)
        )
        return await self._lease_each(
            due, lambda outbox_id, seen_at: self._lease(outbox_id, seen_at, now, lease_seconds)
        )

    async def set_customer(self, tenant_id: str, customer_id: str) -> None:
        async with self._transaction() as conn:
            await store_customer(conn, tenant_id, customer_id)

    async def done(self, job: MeterJob) -> bool:
        return await self._complete(job, state="done", last_error=None)

    async def retry_later(self, job: MeterJob, *, delay_seconds: float, error: str) -> bool:
        now = self._clock()
        return await self._complete(
            job,
            attempts=job.attempts + 1,
            next_attempt_at=now + timedelta(seconds=delay_seconds),
            last_error=error,
        )

    async def fail(self, job: MeterJob, error: str) -> bool:
        return await self._complete(
            job, state="failed", attempts=job.attempts + 1, last_error=error
        )

    async def prune_sent(self, *, before: datetime) -> int:
        # A sent row's next_attempt_at is the end of the lease it was sent under.
        prune = meter_outbox.delete().where(
            meter_outbox.c.state == "done", meter_outbox.c.next_attempt_at < before
        )
        async with self._transaction() as conn:
            return int((await conn.execute(prune)).rowcount)

    async def _complete(self, job: MeterJob, **values: object) -> bool:
        fenced = meter_outbox.update().where(
            meter_outbox.c.id == job.outbox_id,
            meter_outbox.c.state == "pending",
            meter_outbox.c.next_attempt_at == job.lease_until,
        )
        async with self._transaction() as conn:
            result = await conn.execute(fenced.values(updated_at=self._clock(), **values))
            return result.rowcount == 1

    async def _lease(
        self, outbox_id: str, seen_at: datetime, now: datetime, lease_seconds: float
    ) -> MeterJob | None:
        claim = (
            meter_outbox.update()
            .where(
                meter_outbox.c.id == outbox_id,
                meter_outbox.c.state == "pending",
                meter_outbox.c.next_attempt_at == seen_at,
            )
            .values(
                next_attempt_at=now + timedelta(seconds=lease_seconds),
                first_attempt_at=sa.func.coalesce(meter_outbox.c.first_attempt_at, now),
                updated_at=now,
            )
            .returning(meter_outbox.c.next_attempt_at)
        )
        async with self._transaction() as conn:
            won = (await conn.execute(claim)).first()
            if won is None:
                return None  # another worker leased it first
            return await _job(conn, outbox_id, won.next_attempt_at)


async def _unreported(
    conn: AsyncConnection, plans: list[str], since: datetime, last_batch_before: datetime
) -> list[Any]:
    mark = sa.func.coalesce(meter_reports.c.reported, 0)
    query = (
        sa.select(
            usage_hourly.c.tenant_id,
            usage_hourly.c.metric,
            usage_hourly.c.hour_start,
            usage_hourly.c.quantity,
            tenants.c.plan,
            meter_reports.c.reported,
        )
        .select_from(
            usage_hourly.join(tenants, tenants.c.id == usage_hourly.c.tenant_id).outerjoin(
                meter_reports,
                sa.and_(
                    meter_reports.c.tenant_id == usage_hourly.c.tenant_id,
                    meter_reports.c.metric == usage_hourly.c.metric,
                    meter_reports.c.hour_start == usage_hourly.c.hour_start,
                ),
            )
        )
        .where(
            tenants.c.plan.in_(plans),
            usage_hourly.c.hour_start >= since,
            usage_hourly.c.quantity > mark,
            # One batch per interval, however many replicas tick in it.
            sa.or_(
                meter_reports.c.reported_at.is_(None),
                meter_reports.c.reported_at <= last_batch_before,
            ),
        )
        .order_by(usage_hourly.c.tenant_id, usage_hourly.c.metric, usage_hourly.c.hour_start)
    )
    return list((await conn.execute(query)).all())


async def _move_mark(conn: AsyncConnection, row: Any, now: datetime) -> bool:
    """Move the row's reported mark to its booked units, only from the value read."""
    key = (
        meter_reports.c.tenant_id == row.tenant_id,
        meter_reports.c.metric == row.metric,
        meter_reports.c.hour_start == row.hour_start,
    )
    if row.reported is not None:
        moved = await conn.execute(
            meter_reports.update()
            .where(*key, meter_reports.c.reported == row.reported)
            .values(reported=row.quantity, reported_at=now)
        )
        return bool(moved.rowcount == 1)
    inserted = await conn.execute(
        dialect_insert(conn, meter_reports)
        .values(
            tenant_id=row.tenant_id,
            metric=row.metric,
            hour_start=row.hour_start,
            reported=row.quantity,
            reported_at=now,
        )
        .on_conflict_do_nothing()
        .returning(meter_reports.c.reported)
    )
    return inserted.first() is not None


def _queued(row: Any, event_name: str, now: datetime) -> dict[str, object]:
    return {
        "id": str(uuid.uuid4()),
        "tenant_id": row.tenant_id,
        "metric": row.metric,
        "hour_start": row.hour_start,
        "event_name": event_name,
        "quantity": row.quantity - (row.reported or 0),
        "identifier": meter_identifier(row.tenant_id, row.metric, row.hour_start, row.quantity),
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


async def _job(conn: AsyncConnection, outbox_id: str, lease_until: datetime) -> MeterJob:
    row = (
        await conn.execute(
            sa.select(meter_outbox, tenants.c.name, tenants.c.stripe_customer_id)
            .join(tenants, tenants.c.id == meter_outbox.c.tenant_id)
            .where(meter_outbox.c.id == outbox_id)
        )
    ).one()
    return MeterJob(
        outbox_id=outbox_id,
        tenant_id=row.tenant_id,
        tenant_name=row.name,
        stripe_customer_id=row.stripe_customer_id,
        metric=row.metric,
        event_name=row.event_name,
        hour_start=row.hour_start,
        quantity=row.quantity,
        identifier=row.identifier,
        attempts=row.attempts,
        first_attempt_at=row.first_attempt_at,
        lease_until=lease_until,  # as stored, so the fence compares equal
    )
