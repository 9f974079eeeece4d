"""A flood of made-up API keys costs the database a bounded number of queries per second.

The key cache answers known keys from memory; a miss waits for a catch-up poll shared by every
miss of the moment (at most one per CATCH_UP_GAP), never a query per key. Database
transactions are counted on the real engine (SQLite and Postgres) with SQLAlchemy's "begin"
event.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.tenants.api_keys import SECRET_PREFIX, ApiKeyAdmin
from quotaplane.services.key_cache import CATCH_UP_GAP, ApiKeyCache
from quotaplane.storage.sql.api_keys import SqlApiKeyStore
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)


def _random_key() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class QueryCounter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *args: Any) -> None:
        self.count += 1


@pytest.fixture
def queries(database: AsyncEngine) -> Iterator[QueryCounter]:
    counter = QueryCounter()
    sa.event.listen(database.sync_engine, "begin", counter)
    yield counter
    sa.event.remove(database.sync_engine, "begin", counter)


async def test_two_thousand_distinct_random_keys_at_once_cost_a_few_queries(
    database: AsyncEngine, queries: QueryCounter
) -> None:
    cache = ApiKeyCache(SqlApiKeyStore(database))
    await cache.refresh()
    before = queries.count
    answers = await asyncio.gather(*(cache.tenant_for_key(_random_key()) for _ in range(2000)))
    assert answers == [None] * 2000
    assert queries.count - before <= 3  # one shared catch-up poll


async def test_a_sustained_flood_is_bounded_per_second(
    database: AsyncEngine, queries: QueryCounter
) -> None:
    cache = ApiKeyCache(SqlApiKeyStore(database))
    await cache.refresh()
    started, before = time.monotonic(), queries.count
    while time.monotonic() - started < 1.5:  # waves of 50 concurrent distinct keys
        await asyncio.gather(*(cache.tenant_for_key(_random_key()) for _ in range(50)))
    elapsed = time.monotonic() - started
    flood_queries = queries.count - before
    assert flood_queries <= elapsed / CATCH_UP_GAP + 2, (flood_queries, elapsed)


async def test_a_key_created_during_a_flood_works_on_its_first_request(
    database: AsyncEngine,
) -> None:
    store, tenants = SqlApiKeyStore(database), SqlTenantStore(database)
    cache = ApiKeyCache(store)
    await cache.refresh()
    tenant = await tenants.create(name="Acme", plan="growth")
    flood = [cache.tenant_for_key(_random_key()) for _ in range(200)]
    key, secret = await ApiKeyAdmin(store, tenants).create(tenant_id=tenant.id, name="fresh")
    *unknown, found = await asyncio.gather(*flood, cache.tenant_for_key(secret))
    assert found == (tenant.id, key.id)
    assert unknown == [None] * 200
