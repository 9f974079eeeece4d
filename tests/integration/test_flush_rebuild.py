"""Month counters rebuilt from the ledger: a Redis that lost its data gives no free quota.

Real Redis, real ledger (SQLite and Postgres), the real quota engine and counter store. Data
loss is the deletion of every key of the tenant (what a restart without persistence does).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.app import wiring
from quotaplane.app.stores import Connections, stores
from quotaplane.config import Settings
from quotaplane.domain.billing.usage_events import RawUsageEvent, UsageRecorder
from quotaplane.domain.errors import Unavailable
from quotaplane.domain.quota.decisions import QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.services.counter_seeding import LedgerSeededCounters
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.services.usage_flusher import UsageFlusher
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.client import command_pipe
from quotaplane.storage.redis.counters import RedisCounterStore
from quotaplane.storage.redis.flush import RedisQuotaCounters
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)

PLANS = parse_plans("plans:\n  tiny: {price_per_1000_requests: 0.05, monthly_quota: 10}\n", "t")


@dataclass
class Stack:
    engine: QuotaEngine
    recorder: UsageRecorder
    flusher: UsageFlusher
    store: SqlTenantStore
    redis: aioredis.Redis
    prefix: str
    counters: RedisCounterStore
    directory: TenantDirectory

    async def allowed(self, tenant_id: str, cost: int) -> bool:
        request = QuotaRequest.parse(tenant_id=tenant_id, metric="", cost=cost)
        return (await self.engine.check(request)).allowed

    async def lose_redis_data(self, tenant_id: str) -> None:
        pattern = keys.tenant_tag(self.prefix, tenant_id) + "*"
        doomed = [key async for key in self.redis.scan_iter(match=pattern)]
        if doomed:
            await self.redis.delete(*doomed)


@pytest.fixture
async def stack(
    redis_url: str, redis_key_prefix: str, database: AsyncEngine
) -> AsyncIterator[Stack]:
    prefix = f"{redis_key_prefix}:rb{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pipe = command_pipe(redis_url, timeout=2.0)
    # The stores, flusher and counter chain serve builds (app/wiring.py).
    settings = Settings.defaults(redis_key_prefix=prefix, redis_timeout=timedelta(seconds=2))
    connections = Connections(database=database, counters=pipe, redis=client)
    stored = stores(settings, connections)
    directory = TenantDirectory(stored.tenants)
    flusher = wiring.usage_flusher(settings, stored)
    engine = wiring.quota_engine(settings, connections, stored, directory, lambda: PLANS, flusher)
    try:
        yield Stack(
            engine=engine,
            recorder=UsageRecorder(
                tenants=directory,
                plans=lambda: PLANS,
                ledger=stored.usage,
                counters=stored.month_counters,
            ),
            flusher=flusher,
            store=stored.tenants,
            redis=client,
            prefix=prefix,
            counters=RedisCounterStore(pipe, key_prefix=prefix, timeout=2.0),
            directory=directory,
        )
    finally:
        await pipe.aclose()
        await client.aclose()


async def test_after_redis_loses_its_data_the_ledger_still_counts(stack: Stack) -> None:
    tenant = (await stack.store.create(name="t", plan="tiny")).id
    assert await stack.allowed(tenant, 6)
    await stack.flusher.flush_tenant(tenant)
    await stack.lose_redis_data(tenant)
    assert not await stack.allowed(tenant, 5)  # 6 + 5 > 10: no fresh quota
    assert await stack.allowed(tenant, 4)
    assert not await stack.allowed(tenant, 1)


async def test_recorded_usage_before_the_first_check_is_counted_once(stack: Stack) -> None:
    tenant = (await stack.store.create(name="t", plan="tiny")).id
    results = await stack.recorder.record([RawUsageEvent("e1", tenant, "", 8)])
    assert results[0].outcome.value == "accepted"
    assert await stack.allowed(tenant, 2)  # seeded with the ledger's 8, not 8 + 8
    assert not await stack.allowed(tenant, 1)


async def test_recorded_usage_after_the_seed_is_added_to_the_counter(stack: Stack) -> None:
    tenant = (await stack.store.create(name="t", plan="tiny")).id
    assert await stack.allowed(tenant, 1)  # seeds the counter
    await stack.recorder.record([RawUsageEvent("e1", tenant, "", 8)])
    assert not await stack.allowed(tenant, 2)
    assert await stack.allowed(tenant, 1)


def engine_on_a_broken_ledger(stack: Stack, broken: AsyncEngine) -> QuotaEngine:
    month = RedisQuotaCounters(stack.redis, key_prefix=stack.prefix)
    seeded = LedgerSeededCounters(stack.counters, month, SqlUsageLedger(broken))
    return QuotaEngine(tenants=stack.directory, plans=lambda: PLANS, counters=seeded)


async def test_a_ledger_outage_does_not_stop_checkquota_on_a_seeded_counter(
    stack: Stack, unused_port: int
) -> None:
    tenant = (await stack.store.create(name="t", plan="tiny")).id
    assert await stack.allowed(tenant, 1)  # seeds the counter while the ledger answers
    broken = create_async_engine_for(f"postgresql://nobody@127.0.0.1:{unused_port}/none")
    try:
        engine = engine_on_a_broken_ledger(stack, broken)
        request = QuotaRequest.parse(tenant_id=tenant, metric="", cost=3)
        assert (await engine.check(request)).allowed
    finally:
        await broken.dispose()


async def test_a_lost_counter_is_not_charged_while_the_ledger_is_down(
    stack: Stack, unused_port: int
) -> None:
    tenant = (await stack.store.create(name="t", plan="tiny")).id
    assert await stack.allowed(tenant, 9)
    await stack.lose_redis_data(tenant)  # 9 units lost with Redis, not in the ledger either
    broken = create_async_engine_for(f"postgresql://nobody@127.0.0.1:{unused_port}/none")
    try:
        engine = engine_on_a_broken_ledger(stack, broken)
        request = QuotaRequest.parse(tenant_id=tenant, metric="", cost=3)
        with pytest.raises(Unavailable):
            await engine.check(request)
    finally:
        await broken.dispose()
    counter = [key async for key in stack.redis.scan_iter(match=f"*{tenant}*:c:*:month:*")]
    assert counter == []  # nothing was charged on a counter counting from zero


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
