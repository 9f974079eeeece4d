"""The usage flush and the counter seed on a local 3-master Redis Cluster.

Every script of the flush touches keys of one tenant only (one hash tag, one slot), and the
sweep's SCAN must visit every master; tenants are spread over the cluster's slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import RedisCluster

from quotaplane.app import wiring
from quotaplane.app.stores import Connections, stores
from quotaplane.config import Settings
from quotaplane.domain.quota.decisions import QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.services.usage_flusher import UsageFlusher
from quotaplane.storage.redis.client import command_pipe, redis_client
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.tenants import SqlTenantStore
from tests.integration.test_quota_cluster import cluster_url  # noqa: F401 - the cluster fixture

pytestmark = pytest.mark.timeout(120)

PLANS = parse_plans("plans:\n  tiny: {price_per_1000_requests: 0.05, monthly_quota: 10}\n", "t")
PREFIX = "qpt-cluster-flush"


@dataclass
class Stack:
    engine: QuotaEngine
    flusher: UsageFlusher
    store: SqlTenantStore
    ledger: SqlUsageLedger
    client: RedisCluster

    async def allowed(self, tenant_id: str, cost: int) -> bool:
        request = QuotaRequest.parse(tenant_id=tenant_id, metric="", cost=cost)
        return (await self.engine.check(request)).allowed

    async def ledger_units(self, tenant_id: str) -> int:
        rows = await self.ledger.usage(tenant_id, *_whole_time())
        return sum(row.quantity for row in rows)


def _whole_time() -> tuple[datetime, datetime]:
    return datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
async def stack(cluster_url: str, tmp_path: Path) -> AsyncIterator[Stack]:  # noqa: F811
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    database = create_async_engine_for(url)
    client = redis_client(cluster_url, timeout=2.0)
    assert isinstance(client, RedisCluster)
    pipe = command_pipe(cluster_url, timeout=2.0)
    # The stores, flusher and counter chain serve builds (app/wiring.py).
    settings = Settings.defaults(redis_key_prefix=PREFIX, redis_timeout=timedelta(seconds=2))
    connections = Connections(database=database, counters=pipe, redis=client)
    stored = stores(settings, connections)
    flusher = wiring.usage_flusher(settings, stored)
    directory = TenantDirectory(stored.tenants)
    try:
        yield Stack(
            engine=wiring.quota_engine(
                settings, connections, stored, directory, lambda: PLANS, flusher
            ),
            flusher=flusher,
            store=stored.tenants,
            ledger=stored.usage,
            client=client,
        )
    finally:
        await pipe.aclose()
        await client.aclose()
        await database.dispose()


async def test_a_sweep_flushes_tenants_on_every_master(stack: Stack) -> None:
    tenants = [(await stack.store.create(name=f"c{i}", plan="tiny")).id for i in range(8)]
    for i, tenant in enumerate(tenants):
        assert await stack.allowed(tenant, 1 + i % 3)
    report = await stack.flusher.sweep()
    assert report.tenants == len(tenants)
    assert [await stack.ledger_units(t) for t in tenants] == [1 + i % 3 for i in range(8)]
    assert await stack.flusher.sweep() == type(report)()  # nothing left anywhere


async def test_a_lost_counter_is_seeded_from_the_ledger_on_the_cluster(stack: Stack) -> None:
    tenant = (await stack.store.create(name="seed", plan="tiny")).id
    assert await stack.allowed(tenant, 7)
    await stack.flusher.flush_tenant(tenant)
    tag = f"{PREFIX}:{{{tenant}}}"
    doomed = [key async for key in stack.client.scan_iter(match=tag.replace("{", "\\{") + "*")]
    for key in doomed:
        await stack.client.delete(key)
    assert not await stack.allowed(tenant, 4)
    assert await stack.allowed(tenant, 3)
