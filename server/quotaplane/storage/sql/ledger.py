"""SQL usage ledger: hourly usage aggregates, applied flushes and raw RecordUsage events.

Exactly-once is kept by primary keys, inside one transaction each:

- ``apply_flush``: INSERT the flush id into ``usage_flushes`` (ON CONFLICT DO NOTHING) and,
  only if that inserted a row, add the flush's units to ``usage_hourly``. A replayed flush id
  inserts nothing and adds nothing. On Postgres a concurrent insert of the same id waits for
  the first transaction and then does nothing; on SQLite writers are serialized (BEGIN
  IMMEDIATE, see ``engine.py``).
- ``record_events``: INSERT each event into ``usage_events`` (ON CONFLICT DO NOTHING on
  ``(tenant_id, event_id)``) and add only the inserted ones to ``usage_hourly``; events of a
  period whose invoice is final are refused in the same transaction (see ``invoices.py`` for
  how a finalize in progress is waited for).

``usage_flushes`` rows are kept: a pending flush may be replayed long after it was applied.
Database failures become ``Unavailable``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.billing.events import UsageEvent
from quotaplane.domain.billing.ports import HourlyUsage, PendingFlush, Recorded
from quotaplane.domain.billing.statuses import CLOSED
from quotaplane.domain.errors import FailedPrecondition
from quotaplane.domain.windows import Period, Window, window_start
from quotaplane.storage.sql.access import SqlStore, dialect_insert, utc_now
from quotaplane.storage.sql.tables import (
    invoices,
    tenants,
    usage_events,
    usage_flushes,
    usage_hourly,
)


@contextlib.contextmanager
def _refused(what: str) -> Iterator[None]:
    # A constraint refusing the rows (a tenant the ledger does not know) is not an outage:
    # retrying will not help, and the caller must not stop flushing other tenants for it.
    try:
        yield
    except sa.exc.IntegrityError as error:
        raise FailedPrecondition(f"{what} refused by the ledger: {error.orig}") from None


class SqlUsageLedger(SqlStore):
    """UsageLedger on Postgres or SQLite."""

    _what = "usage ledger"

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def apply_flush(self, flush: PendingFlush) -> bool:
        return (await self.apply_flushes([flush]))[0]

    async def apply_flushes(self, flushes: Sequence[PendingFlush]) -> list[bool]:
        names = ", ".join(sorted({flush.tenant_id for flush in flushes}))
        with _refused(f"usage flush of tenant(s) {names}"):
            return await self._apply_flushes(flushes)

    async def _apply_flushes(self, flushes: Sequence[PendingFlush]) -> list[bool]:
        # Markers first, then the hourly rows, each in one global order: two replicas applying
        # overlapping flushes take their locks in the same order and cannot deadlock.
        now = self._clock()
        new: set[str] = set()
        totals: dict[tuple[str, str, datetime], list[int]] = {}
        async with self._transaction() as conn:
            for flush in sorted(flushes, key=lambda f: f.flush_id):
                if await _insert_marker(conn, flush.flush_id, now):
                    new.add(flush.flush_id)
                    _add_up(totals, flush)
            for (tenant_id, metric, hour), (quantity, overage) in sorted(totals.items()):
                await _add_hourly(conn, tenant_id, HourlyUsage(metric, hour, quantity, overage))
        return [flush.flush_id in new for flush in flushes]

    async def record_events(self, events: Sequence[UsageEvent]) -> list[Recorded]:
        received = self._clock()
        results: list[Recorded] = []
        tenant_ids = sorted({event.tenant_id for event in events})
        async with self._transaction() as conn:
            closed = await _closed_periods(conn, tenant_ids)
            for event in events:
                if (event.tenant_id, str(Period.of(event.occurred_at))) in closed:
                    results.append(Recorded.CLOSED)
                elif await _insert_event(conn, event, received):
                    results.append(Recorded.STORED)
                    hour = window_start(Window.HOUR, event.occurred_at)
                    await _add_hourly(
                        conn, event.tenant_id, HourlyUsage(event.metric, hour, event.quantity)
                    )
                else:
                    results.append(Recorded.DUPLICATE)
        return results

    async def usage(self, tenant_id: str, start: datetime, end: datetime) -> list[HourlyUsage]:
        query = (
            sa.select(usage_hourly)
            .where(
                usage_hourly.c.tenant_id == tenant_id,
                usage_hourly.c.hour_start >= start,
                usage_hourly.c.hour_start < end,
            )
            .order_by(usage_hourly.c.hour_start, usage_hourly.c.metric)
        )
        async with self._connection() as conn:
            rows = (await conn.execute(query)).mappings()
            return [
                HourlyUsage(row["metric"], row["hour_start"], row["quantity"], row["overage"])
                for row in rows
            ]

    async def units_and_applied(
        self, tenant_id: str, metric: str, period: Period, flush_ids: Sequence[str]
    ) -> tuple[int, frozenset[str]]:
        # One statement (UNION ALL) reads both at one snapshot on every dialect: a flush
        # applied between two reads would be either counted twice or not at all.
        units = sa.select(
            sa.literal("", sa.String).label("flush_id"),
            sa.func.coalesce(sa.func.sum(usage_hourly.c.quantity), 0).label("units"),
        ).where(
            usage_hourly.c.tenant_id == tenant_id,
            usage_hourly.c.metric == metric,
            usage_hourly.c.hour_start >= period.start,
            usage_hourly.c.hour_start < period.end,
        )
        applied = sa.select(usage_flushes.c.flush_id, sa.literal(0).label("units")).where(
            usage_flushes.c.flush_id.in_(list(flush_ids))
        )
        async with self._connection() as conn:
            rows = (await conn.execute(sa.union_all(units, applied))).all()
        total = sum(int(row.units) for row in rows if row.flush_id == "")
        return total, frozenset(str(row.flush_id) for row in rows if row.flush_id != "")


async def _closed_periods(conn: AsyncConnection, tenant_ids: list[str]) -> set[tuple[str, str]]:
    """(tenant, period) pairs with a final invoice, after waiting out finalizes in progress."""
    if conn.dialect.name == "postgresql":
        # KEY SHARE on the tenant rows waits for a finalize holding one (FOR UPDATE), so the
        # query below, a new snapshot, sees that invoice final. Ids in order: no deadlock.
        hold = sa.select(tenants.c.id).where(tenants.c.id.in_(tenant_ids)).order_by(tenants.c.id)
        await conn.execute(hold.with_for_update(read=True, key_share=True))
    query = sa.select(invoices.c.tenant_id, invoices.c.period).where(
        invoices.c.tenant_id.in_(tenant_ids), invoices.c.status.in_(CLOSED)
    )
    return {(row.tenant_id, row.period) for row in await conn.execute(query)}


async def _insert_marker(conn: AsyncConnection, flush_id: str, now: datetime) -> bool:
    marker = (
        dialect_insert(conn, usage_flushes)
        .values(flush_id=flush_id, applied_at=now)
        .on_conflict_do_nothing(index_elements=["flush_id"])
        .returning(usage_flushes.c.flush_id)
    )
    # RETURNING, not rowcount: psycopg's async cursor reports -1 for this statement.
    return (await conn.execute(marker)).first() is not None


def _add_up(totals: dict[tuple[str, str, datetime], list[int]], flush: PendingFlush) -> None:
    for row in flush.usage:
        slot = totals.setdefault((flush.tenant_id, row.metric, row.hour_start), [0, 0])
        slot[0] += row.quantity
        slot[1] += row.overage


async def _insert_event(conn: AsyncConnection, event: UsageEvent, received: datetime) -> bool:
    statement = (
        dialect_insert(conn, usage_events)
        .values(
            tenant_id=event.tenant_id,
            event_id=event.event_id,
            metric=event.metric,
            quantity=event.quantity,
            occurred_at=event.occurred_at,
            received_at=received,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "event_id"])
        .returning(usage_events.c.event_id)
    )
    return (await conn.execute(statement)).first() is not None


async def _add_hourly(conn: AsyncConnection, tenant_id: str, row: HourlyUsage) -> None:
    insert = dialect_insert(conn, usage_hourly).values(
        tenant_id=tenant_id,
        metric=row.metric,
        hour_start=row.hour_start,
        quantity=row.quantity,
        overage=row.overage,
    )
    upsert = insert.on_conflict_do_update(
        index_elements=["tenant_id", "metric", "hour_start"],
        set_={
            "quantity": usage_hourly.c.quantity + insert.excluded.quantity,
            "overage": usage_hourly.c.overage + insert.excluded.overage,
        },
    )
    await conn.execute(upsert)
