"""The usage flush on real Redis and a real ledger (SQLite and Postgres): exactly once.

Usage is admitted through the real counter store (consume.lua adds it to the unflushed hash);
the flusher moves it into ``usage_hourly``. Crashes are simulated by stopping the protocol
between its steps (take / apply / complete) and letting another flusher replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import sql
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.errors import Unavailable
from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult, CounterLimit
from quotaplane.domain.windows import Window, window_start
from quotaplane.services.usage_flusher import UsageFlusher, UsageTrackingCounters
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.counters import (
    RedisCounterStore,
    consume_script_source,
    parse_reply,
)
from quotaplane.storage.redis.flush import RedisUnflushedUsage
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)

BIG = 10**9


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix(redis_key_prefix: str) -> str:
    # A slice of the run's prefix per test, so a sweep sees only this test's tenants.
    return f"{redis_key_prefix}:flush{uuid.uuid4().hex[:8]}"


@dataclass
class Rig:
    redis: aioredis.Redis
    prefix: str
    engine: AsyncEngine
    unflushed: RedisUnflushedUsage
    ledger: SqlUsageLedger

    def flusher(self, ledger: SqlUsageLedger | None = None) -> UsageFlusher:
        return UsageFlusher(self.unflushed, ledger or self.ledger)

    async def tenant(self) -> str:
        return (await SqlTenantStore(self.engine).create(name="t", plan="growth")).id

    async def admit(self, tenant_id: str, cost: int = 1, metric: str = "requests") -> None:
        now = datetime.now(UTC)
        month = int(window_start(Window.MONTH, now).timestamp())
        call = ConsumeCall(
            tenant_id=tenant_id,
            metric=metric,
            cost=cost,
            limits=(CounterLimit(Window.MONTH, month, BIG, False, _ms(now + timedelta(days=40))),),
            hour_start=int(window_start(Window.HOUR, now).timestamp()),
            dedup_expires_at_ms=_ms(now + timedelta(minutes=1)),
        )
        assert (await self.consume(call)).allowed

    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        # consume.lua itself, one EVAL per call (its documented KEYS and ARGV).
        script_keys = [keys.unflushed_key(self.prefix, call.tenant_id)] + [
            keys.counter_key(
                self.prefix, call.tenant_id, call.metric, limit.window.value, limit.window_start
            )
            for limit in call.limits
        ]
        args = RedisCounterStore.script_args(call)
        reply = await self.redis.eval(
            consume_script_source(), len(script_keys), *script_keys, *args
        )
        return parse_reply(reply, len(call.limits))

    async def ledger_total(self, tenant_id: str, metric: str = "requests") -> int:
        rows = await self.ledger.usage(tenant_id, datetime(2000, 1, 1, tzinfo=UTC), _far())
        return sum(row.quantity for row in rows if row.metric == metric)

    async def redis_keys(self, tenant_id: str) -> list[str]:
        pattern = keys.unflushed_key(self.prefix, tenant_id) + "*"
        return [k async for k in self.redis.scan_iter(match=pattern)]


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _far() -> datetime:
    return datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
def rig(redis: aioredis.Redis, prefix: str, database: AsyncEngine) -> Rig:
    return Rig(
        redis=redis,
        prefix=prefix,
        engine=database,
        unflushed=RedisUnflushedUsage(redis, key_prefix=prefix),
        ledger=SqlUsageLedger(database),
    )


async def test_a_flush_moves_admitted_usage_into_the_ledger_and_out_of_redis(rig: Rig) -> None:
    tenant = await rig.tenant()
    for _ in range(3):
        await rig.admit(tenant, cost=5)
    flusher = rig.flusher()
    flusher.mark_dirty(tenant)
    report = await flusher.tick()
    assert (report.tenants, report.flushes) == (1, 1)
    assert await rig.ledger_total(tenant) == 15
    assert await rig.redis_keys(tenant) == []


async def test_flushes_add_up_per_metric_and_hour(rig: Rig) -> None:
    tenant = await rig.tenant()
    await rig.admit(tenant, cost=2)
    await rig.flusher().flush_tenant(tenant)
    await rig.admit(tenant, cost=3)
    await rig.admit(tenant, cost=7, metric="rating.bulk")
    await rig.flusher().flush_tenant(tenant)
    assert await rig.ledger_total(tenant) == 5
    assert await rig.ledger_total(tenant, "rating.bulk") == 7


async def test_a_crash_after_take_is_replayed_once(rig: Rig) -> None:
    tenant = await rig.tenant()
    await rig.admit(tenant, cost=4)
    taken = await rig.unflushed.take(tenant)  # then the replica dies
    assert taken is not None
    await rig.admit(tenant, cost=1)
    await rig.flusher().flush_tenant(tenant)
    assert await rig.ledger_total(tenant) == 5
    assert await rig.redis_keys(tenant) == []


async def test_a_crash_after_the_ledger_commit_is_not_counted_twice(rig: Rig) -> None:
    tenant = await rig.tenant()
    await rig.admit(tenant, cost=4)
    taken = await rig.unflushed.take(tenant)
    assert taken is not None
    assert await rig.ledger.apply_flush(taken)  # then the replica dies before complete
    await rig.flusher().flush_tenant(tenant)
    assert await rig.ledger_total(tenant) == 4
    assert await rig.redis_keys(tenant) == []


async def test_applying_the_same_flush_id_twice_is_refused(rig: Rig) -> None:
    tenant = await rig.tenant()
    await rig.admit(tenant, cost=3)
    taken = await rig.unflushed.take(tenant)
    assert taken is not None
    assert [await rig.ledger.apply_flush(taken) for _ in range(2)] == [True, False]
    assert await rig.ledger_total(tenant) == 3


async def test_the_sweep_finds_usage_no_replica_marked(rig: Rig) -> None:
    tenants = [await rig.tenant() for _ in range(3)]
    for tenant in tenants:
        await rig.admit(tenant, cost=2)
    report = await rig.flusher().sweep()  # a fresh replica: nothing marked dirty
    assert report.tenants == 3
    assert [await rig.ledger_total(t) for t in tenants] == [2, 2, 2]


async def test_two_flushers_under_load_count_every_unit_once(rig: Rig) -> None:
    tenants = [await rig.tenant() for _ in range(2)]
    one, two = rig.flusher(), rig.flusher()
    admitted = 0
    stop = asyncio.Event()

    async def flushing(flusher: UsageFlusher) -> None:
        while not stop.is_set():
            await flusher.sweep()
            await asyncio.sleep(0)

    workers = [asyncio.create_task(flushing(f)) for f in (one, two)]
    for round_ in range(40):
        await asyncio.gather(*(rig.admit(tenants[i % 2], cost=1 + i) for i in range(5)))
        admitted += sum(1 + i for i in range(5))
        if round_ % 10 == 0:  # a crash left a pending record that both will replay
            await rig.unflushed.take(tenants[0])
    stop.set()
    await asyncio.gather(*workers)
    await one.sweep()
    assert sum([await rig.ledger_total(t) for t in tenants]) == admitted
    assert [await rig.redis_keys(t) for t in tenants] == [[], []]


async def test_tracking_counters_mark_the_tenants_that_were_admitted(rig: Rig) -> None:
    tenant, other = await rig.tenant(), await rig.tenant()
    flusher = rig.flusher()

    class Plain:
        consume = rig.consume

    tracking = UsageTrackingCounters(Plain(), flusher.mark_dirty)
    rig.consume = tracking.consume  # type: ignore[method-assign]
    await rig.admit(tenant, cost=2)
    del rig.consume
    await rig.admit(other, cost=2)  # through the plain store: not marked
    assert flusher.dirty == {tenant}


async def test_a_ledger_on_a_closed_port_leaves_the_usage_waiting_in_redis(
    rig: Rig, unused_tcp_port: int
) -> None:
    tenant = await rig.tenant()
    await rig.admit(tenant, cost=6)
    broken = create_async_engine_for(f"postgresql://nobody@127.0.0.1:{unused_tcp_port}/none")
    try:
        down = rig.flusher(SqlUsageLedger(broken))
        down.mark_dirty(tenant)
        with pytest.raises(Unavailable):
            await down.tick()
        with pytest.raises(Unavailable):
            await down.tick()  # retries the same record; takes no new one
    finally:
        await broken.dispose()
    assert down.dirty == {tenant}
    assert len(await rig.redis_keys(tenant)) == 2  # one pending record and its id set
    assert await rig.ledger_total(tenant) == 0
    await rig.flusher().sweep()
    assert await rig.ledger_total(tenant) == 6


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_usage_waits_out_a_postgres_outage_in_the_same_flusher(
    fresh_postgres_database: Callable[[], str],
    postgres_admin_url: str,
    redis: aioredis.Redis,
    prefix: str,
) -> None:
    url = fresh_postgres_database()
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_async_engine_for(url)
    rig = Rig(
        redis,
        prefix,
        engine,
        RedisUnflushedUsage(redis, key_prefix=prefix),
        SqlUsageLedger(engine),
    )
    try:
        tenant = await rig.tenant()
        flusher = rig.flusher()
        await rig.admit(tenant, cost=3)
        name = url.rsplit("/", 1)[1]
        await engine.dispose()
        await asyncio.to_thread(_rename_database, postgres_admin_url, name, name + "_off")
        try:
            flusher.mark_dirty(tenant)
            with pytest.raises(Unavailable):
                await flusher.tick()
            await rig.admit(tenant, cost=4)  # CheckQuota keeps admitting meanwhile
        finally:
            await asyncio.to_thread(_rename_database, postgres_admin_url, name + "_off", name)
        await flusher.tick()  # the record taken before the outage, then what came during it
        assert await rig.ledger_total(tenant) == 7
    finally:
        await engine.dispose()


def _rename_database(admin_url: str, old: str, new: str) -> None:
    with psycopg.connect(
        admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (old,)
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)
            )
        )


async def test_the_flush_lag_grows_while_the_ledger_is_down(rig: Rig, unused_tcp_port: int) -> None:
    tenant = await rig.tenant()
    await rig.admit(tenant, cost=1)
    broken = create_async_engine_for(f"postgresql://nobody@127.0.0.1:{unused_tcp_port}/none")
    lags: list[float] = []
    flusher = UsageFlusher(
        rig.unflushed,
        SqlUsageLedger(broken),
        interval=timedelta(milliseconds=20),
        on_lag=lags.append,
    )
    task = asyncio.create_task(flusher.run())
    try:
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broken.dispose()
    assert lags[-1] > lags[0] >= 0 and lags[-1] >= 0.1


async def test_a_tenant_the_ledger_refuses_does_not_hold_up_the_others(rig: Rig) -> None:
    good = [await rig.tenant() for _ in range(3)]
    stranger = str(uuid.uuid4())  # usage in Redis for a tenant the ledger does not have
    for tenant in [*good, stranger]:
        await rig.admit(tenant, cost=2)
    flusher = rig.flusher()
    for tenant in [*good, stranger]:
        flusher.mark_dirty(tenant)
    report = await flusher.tick()
    assert (report.tenants, report.failed) == (3, 1)
    assert [await rig.ledger_total(t) for t in good] == [2, 2, 2]
    assert len(await rig.redis_keys(stranger)) == 2  # its record waits for a later attempt


async def test_apply_flushes_reports_each_flush_in_order(rig: Rig) -> None:
    tenants = [await rig.tenant() for _ in range(2)]
    flushes = []
    for tenant in tenants:
        await rig.admit(tenant, cost=3)
        taken = await rig.unflushed.take(tenant)
        assert taken is not None
        flushes.append(taken)
    assert await rig.ledger.apply_flushes([flushes[0]]) == [True]
    assert await rig.ledger.apply_flushes([flushes[1], flushes[0]]) == [True, False]
    assert [await rig.ledger_total(t) for t in tenants] == [3, 3]
