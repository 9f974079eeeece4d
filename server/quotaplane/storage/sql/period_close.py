"""SQL close ledger: the period close's runs, leases and per-tenant progress (CloseLedger).

Every write is a compare-and-set on the run row (``UPDATE ... WHERE owner = :me AND run =
:run AND state = 'running'``), so an attempt whose lease another one took writes nothing; two
attempts starting the same period's first run collide on its primary key and one of them
gets None. This works alike on Postgres and SQLite (no row locks needed).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.billing.period_close import (
    CloseCandidate,
    CloseRun,
    Outcome,
    RunState,
)
from quotaplane.domain.windows import Period
from quotaplane.storage.sql.access import SqlStore, dialect_insert
from quotaplane.storage.sql.tables import (
    billing_close_runs,
    billing_close_tenants,
    tenants,
    usage_hourly,
)

runs = billing_close_runs.c


class SqlCloseLedger(SqlStore):
    """CloseLedger on Postgres or SQLite."""

    _what = "billing close ledger"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(
        self, period: Period, owner: str, *, now: datetime, lease_until: datetime, restart: bool
    ) -> CloseRun | None:
        try:
            async with self._transaction() as conn:
                return await _claim(conn, period, owner, now, lease_until, restart)
        except IntegrityError:
            return None  # another attempt started the period's first run at the same time

    async def closed_tenants(self, run: CloseRun) -> frozenset[str]:
        query = sa.select(billing_close_tenants.c.tenant_id).where(
            billing_close_tenants.c.period == str(run.period),
            billing_close_tenants.c.run == run.run,
        )
        async with self._connection() as conn:
            return frozenset(row.tenant_id for row in await conn.execute(query))

    async def record_tenant(
        self,
        run: CloseRun,
        tenant_id: str,
        outcome: Outcome,
        invoices_closed: int,
        *,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        async with self._transaction() as conn:
            if not await _fenced(conn, run, lease_until=lease_until):
                return False
            statement = (
                dialect_insert(conn, billing_close_tenants)
                .values(
                    period=str(run.period),
                    run=run.run,
                    tenant_id=tenant_id,
                    outcome=outcome.value,
                    invoices_closed=invoices_closed,
                    closed_at=now,
                )
                .on_conflict_do_nothing()
            )
            await conn.execute(statement)
            return True

    async def finish(self, run: CloseRun, *, now: datetime) -> bool:
        async with self._transaction() as conn:
            return await _fenced(conn, run, state=RunState.DONE.value, finished_at=now)

    async def release(self, run: CloseRun, *, now: datetime) -> bool:
        async with self._transaction() as conn:
            return await _fenced(conn, run, lease_until=now)

    async def candidates(
        self, period: Period, *, after: str | None, limit: int
    ) -> list[CloseCandidate]:
        used = (
            sa.exists()
            .where(
                usage_hourly.c.tenant_id == tenants.c.id,
                usage_hourly.c.hour_start >= period.start,
                usage_hourly.c.hour_start < period.end,
                usage_hourly.c.quantity > 0,
            )
            .label("has_usage")
        )
        query = (
            sa.select(tenants.c.id, tenants.c.name, tenants.c.plan, used)
            .where(tenants.c.created_at < period.end)
            .order_by(tenants.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(tenants.c.id > after)
        async with self._connection() as conn:
            rows = await conn.execute(query)
            return [CloseCandidate(r.id, r.name, r.plan, bool(r.has_usage)) for r in rows]


async def _claim(
    conn: AsyncConnection,
    period: Period,
    owner: str,
    now: datetime,
    lease_until: datetime,
    restart: bool,
) -> CloseRun | None:
    key = str(period)
    row = (await conn.execute(sa.select(billing_close_runs).where(runs.period == key))).first()
    held = CloseRun(period, 1, RunState.RUNNING, owner, lease_until)
    if row is None:
        await conn.execute(
            billing_close_runs.insert().values(
                period=key,
                run=1,
                state=RunState.RUNNING.value,
                owner=owner,
                lease_until=lease_until,
                started_at=now,
            )
        )
        return held
    if row.state == RunState.DONE and not restart:
        return CloseRun(period, row.run, RunState.DONE, row.owner, row.lease_until)
    same_run = sa.and_(runs.period == key, runs.run == row.run, runs.owner == row.owner)
    values: dict[str, object] = {"owner": owner, "lease_until": lease_until}
    if row.state == RunState.DONE:
        values.update(run=row.run + 1, state=RunState.RUNNING.value, started_at=now)
        values["finished_at"] = None
        condition = sa.and_(same_run, runs.state == RunState.DONE.value)
    else:
        free = sa.or_(runs.lease_until <= now, runs.owner == owner)
        condition = sa.and_(same_run, runs.state == RunState.RUNNING.value, free)
    changed = await conn.execute(billing_close_runs.update().where(condition).values(**values))
    if changed.rowcount != 1:
        return None  # held by another attempt, or it moved between the read and the write
    run = row.run + 1 if row.state == RunState.DONE else row.run
    return CloseRun(period, run, RunState.RUNNING, owner, lease_until)


async def _fenced(conn: AsyncConnection, run: CloseRun, **values: object) -> bool:
    """Update the run row if this attempt still holds it; True when it did."""
    statement = (
        billing_close_runs.update()
        .where(
            runs.period == str(run.period),
            runs.run == run.run,
            runs.owner == run.owner,
            runs.state == RunState.RUNNING.value,
        )
        .values(**values)
    )
    return bool((await conn.execute(statement)).rowcount == 1)
