"""Usage waiting in Redis survives a Redis restart with persistence (AOF), and is flushed once.

A private valkey (AOF on) holds unflushed usage and a pending record left by a crashed
flusher; Redis is stopped and started again; the next sweep puts exactly that usage into the
ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.errors import Unavailable
from quotaplane.domain.windows import Window, window_start
from quotaplane.services.usage_flusher import UsageFlusher
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.flush import RedisUnflushedUsage
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.tenants import SqlTenantStore
from tests.harness.redis_servers import PrivateRedis

pytestmark = pytest.mark.timeout(60)

PREFIX = "qpt-restart"


@pytest.fixture
async def client(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        yield redis
    finally:
        await redis.aclose()


async def _admit(client: aioredis.Redis, tenant_id: str, units: int) -> None:
    # What consume.lua does for admitted units (HINCRBY of the tenant's unflushed hash).
    hour = int(window_start(Window.HOUR, datetime.now(UTC)).timestamp())
    field = keys.unflushed_field("requests", hour)
    await client.hincrby(keys.unflushed_key(PREFIX, tenant_id), field, units)


async def test_waiting_usage_survives_a_redis_restart_and_is_flushed_once(
    private_redis: PrivateRedis, client: aioredis.Redis, database: AsyncEngine
) -> None:
    tenant = (await SqlTenantStore(database).create(name="restart", plan="growth")).id
    unflushed = RedisUnflushedUsage(client, key_prefix=PREFIX)
    await _admit(client, tenant, 5)
    assert await unflushed.take(tenant) is not None  # a flusher took it, then crashed
    await _admit(client, tenant, 7)
    private_redis.stop()
    private_redis.start()
    ledger = SqlUsageLedger(database)
    flusher = UsageFlusher(RedisUnflushedUsage(client, key_prefix=PREFIX), ledger)
    for _ in range(3):  # as the run loop does: a connection the restart closed fails once
        try:
            await flusher.sweep()
            break
        except Unavailable:
            continue
    rows = await ledger.usage(tenant, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC))
    assert sum(row.quantity for row in rows) == 12
    assert [key async for key in client.scan_iter(match=f"{PREFIX}:*unflushed*")] == []
