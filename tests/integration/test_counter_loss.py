"""A month counter lost while replicas run: no unit is admitted past the quota.

Two replicas (each its own engine, counter store, seeding and Redis connections) on one real
Redis and one real ledger (SQLite and Postgres); 200 concurrent callers; a flusher moving usage
to the ledger meanwhile; and, mid-load, the month counter deleted in Redis (what a failover
to a replica that missed it, or data loss, does). Every replica is warm: each has charged the
counter before it disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.quota.decisions import QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.domain.windows import Period, Window
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.services.counter_seeding import LedgerSeededCounters
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.services.usage_flusher import UsageFlusher
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.client import command_pipe
from quotaplane.storage.redis.counters import RedisCounterStore
from quotaplane.storage.redis.flush import RedisQuotaCounters, RedisUnflushedUsage
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(120)

QUOTA = 6000
PLANS = parse_plans(
    f"plans:\n  metered: {{price_per_1000_requests: 0.05, monthly_quota: {QUOTA}}}\n", "t"
)
CALLERS = 200


@dataclass
class Replicas:
    engines: list[QuotaEngine]
    flusher: UsageFlusher
    ledger: SqlUsageLedger
    redis: aioredis.Redis
    prefix: str

    async def admitted(self, replica: int, tenant_id: str, cost: int) -> bool:
        request = QuotaRequest.parse(tenant_id=tenant_id, metric="", cost=cost)
        return (await self.engines[replica].check(request)).allowed

    def month_counter(self, tenant_id: str) -> str:
        start = int(Period.of(datetime.now(UTC)).start.timestamp())
        return keys.counter_key(self.prefix, tenant_id, "requests", Window.MONTH.value, start)

    async def ledger_units(self, tenant_id: str) -> int:
        month = Period.of(datetime.now(UTC))
        return sum(
            row.quantity for row in await self.ledger.usage(tenant_id, month.start, month.end)
        )


@pytest.fixture
async def replicas(
    redis_url: str, redis_key_prefix: str, database: AsyncEngine
) -> AsyncIterator[Replicas]:
    prefix = f"{redis_key_prefix}:cl{uuid.uuid4().hex[:8]}"
    ledger = SqlUsageLedger(database)
    async with contextlib.AsyncExitStack() as stack:
        engines = []
        for _ in range(2):
            client = aioredis.Redis.from_url(redis_url, decode_responses=True)
            stack.push_async_callback(client.aclose)
            pipe = command_pipe(redis_url, timeout=2.0)
            stack.push_async_callback(pipe.aclose)
            counters = LedgerSeededCounters(
                RedisCounterStore(pipe, key_prefix=prefix, timeout=2.0),
                RedisQuotaCounters(client, key_prefix=prefix),
                ledger,
            )
            directory = TenantDirectory(SqlTenantStore(database))
            engines.append(QuotaEngine(tenants=directory, plans=lambda: PLANS, counters=counters))
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        stack.push_async_callback(client.aclose)
        flusher = UsageFlusher(RedisUnflushedUsage(client, key_prefix=prefix), ledger)
        yield Replicas(engines, flusher, ledger, client, prefix)


async def test_a_counter_lost_mid_load_admits_nothing_past_the_quota(
    replicas: Replicas, database: AsyncEngine
) -> None:
    tenant = (await SqlTenantStore(database).create(name="t", plan="metered")).id
    for replica in (0, 1):  # both replicas warm: each has charged the counter
        for _ in range(5):
            assert await replicas.admitted(replica, tenant, 500)
    await replicas.flusher.flush_tenant(tenant)
    admitted = [5000]

    async def caller(replica: int) -> None:
        while await replicas.admitted(replica, tenant, 1):
            admitted[0] += 1
            if admitted[0] == 5010:  # mid-load: the other callers keep going meanwhile
                assert await replicas.redis.delete(replicas.month_counter(tenant)) == 1
            await asyncio.sleep(0.001)  # a caller's think time: the load lasts a few rounds

    done = asyncio.Event()

    async def flush_meanwhile() -> None:
        # Stopped by the event, not cancelled: a cancelled SQLite query can leave its
        # connection inside a transaction.
        while not done.is_set():
            await replicas.flusher.flush_tenant(tenant)
            await asyncio.sleep(0.05)

    flushing = asyncio.ensure_future(flush_meanwhile())
    try:
        async with asyncio.TaskGroup() as callers:  # one failing caller stops the others
            for i in range(CALLERS):
                callers.create_task(caller(i % 2))
    finally:
        done.set()
        await flushing
    await replicas.flusher.flush_tenant(tenant)

    assert admitted[0] == QUOTA, f"{admitted[0] - QUOTA} units admitted past the quota"
    assert await replicas.ledger_units(tenant) == admitted[0]
    counter = await replicas.redis.get(replicas.month_counter(tenant))
    # Lost while the callers ran, then reseeded: every admitted unit, once.
    assert int(counter or 0) == admitted[0]
