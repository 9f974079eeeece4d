"""API keys on SQLite and Postgres: the admin use cases, the SQL store and the key cache.

The cache must answer a new key at once (one lookup), and stop answering a revoked key within
``cache_ttl`` (1 s) while its poller runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.errors import InvalidArgument, NotFound
from quotaplane.domain.tenants.api_keys import ApiKeyAdmin, hash_api_key
from quotaplane.domain.tenants.model import Tenant
from quotaplane.services.key_cache import ApiKeyCache
from quotaplane.storage.sql.api_keys import SqlApiKeyStore
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(database: AsyncEngine) -> SqlApiKeyStore:
    return SqlApiKeyStore(database)


@pytest.fixture
def admin(database: AsyncEngine, store: SqlApiKeyStore) -> ApiKeyAdmin:
    return ApiKeyAdmin(store, SqlTenantStore(database))


@pytest.fixture
async def tenant(database: AsyncEngine) -> Tenant:
    return await SqlTenantStore(database).create(name="Acme", plan="growth")


async def test_create_returns_the_secret_and_stores_only_its_hash(
    admin: ApiKeyAdmin, store: SqlApiKeyStore, database: AsyncEngine, tenant: Tenant
) -> None:
    key, secret = await admin.create(tenant_id=tenant.id, name="production")
    grant = await store.find_by_hash(hash_api_key(secret))
    assert grant is not None and (grant.key_id, grant.tenant_id) == (key.id, tenant.id)
    assert key.prefix == secret[:12] and key.revoked_at is None
    async with database.connect() as conn:
        dump = str((await conn.exec_driver_sql("SELECT * FROM api_keys")).fetchall())
    assert secret not in dump and secret[12:] not in dump


async def test_list_shows_the_tenants_keys_oldest_first(admin: ApiKeyAdmin, tenant: Tenant) -> None:
    first, _ = await admin.create(tenant_id=tenant.id, name="a")
    second, _ = await admin.create(tenant_id=tenant.id, name="b")
    listed = await admin.list(tenant_id=tenant.id, include_revoked=False)
    assert [k.id for k in listed] == [first.id, second.id]


async def test_revoked_keys_are_listed_only_on_request(admin: ApiKeyAdmin, tenant: Tenant) -> None:
    key, _ = await admin.create(tenant_id=tenant.id, name="old")
    await admin.revoke(key.id)
    assert await admin.list(tenant_id=tenant.id, include_revoked=False) == []
    [listed] = await admin.list(tenant_id=tenant.id, include_revoked=True)
    assert listed.id == key.id and listed.revoked


async def test_revoking_twice_keeps_the_first_revocation(
    admin: ApiKeyAdmin, tenant: Tenant
) -> None:
    key, _ = await admin.create(tenant_id=tenant.id, name="k")
    first = await admin.revoke(key.id)
    await asyncio.sleep(0.01)
    assert await admin.revoke(key.id) == first


async def test_revoking_an_unknown_key_is_not_found(admin: ApiKeyAdmin) -> None:
    with pytest.raises(NotFound, match="API key"):
        await admin.revoke(str(uuid.uuid4()))


async def test_a_key_for_an_unknown_tenant_is_not_found_and_not_stored(
    admin: ApiKeyAdmin, store: SqlApiKeyStore
) -> None:
    before = await store.changed_since(None)
    with pytest.raises(NotFound, match="tenant"):
        await admin.create(tenant_id=str(uuid.uuid4()), name="k")
    assert await store.changed_since(None) == before


@pytest.mark.parametrize(
    ("tenant_id", "name", "match"),
    [("", "k", "tenant_id is required"), ("nope", "k", "UUID"), (None, "", "name is required")],
)
async def test_malformed_input_is_invalid(
    admin: ApiKeyAdmin, tenant: Tenant, tenant_id: str | None, name: str, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await admin.create(tenant_id=tenant.id if tenant_id is None else tenant_id, name=name)


async def test_the_cache_finds_a_new_key_at_once(
    admin: ApiKeyAdmin, store: SqlApiKeyStore, tenant: Tenant
) -> None:
    cache = ApiKeyCache(store)
    await cache.refresh()
    key, secret = await admin.create(tenant_id=tenant.id, name="fresh")
    assert await cache.tenant_for_key(secret) == (tenant.id, key.id)


async def test_the_cache_refuses_unknown_and_malformed_secrets(store: SqlApiKeyStore) -> None:
    cache = ApiKeyCache(store)
    await cache.refresh()
    assert await cache.tenant_for_key("qp_live_" + "A" * 43) is None
    assert await cache.tenant_for_key("Bearer whatever") is None


async def test_a_revoked_key_stops_working_within_the_ttl(
    admin: ApiKeyAdmin, store: SqlApiKeyStore, tenant: Tenant
) -> None:
    key, secret = await admin.create(tenant_id=tenant.id, name="doomed")
    cache = ApiKeyCache(store, ttl=timedelta(seconds=1))
    await cache.refresh()
    assert await cache.tenant_for_key(secret) == (tenant.id, key.id)
    poller = asyncio.create_task(cache.run())
    try:
        await admin.revoke(key.id)
        revoked_at = time.monotonic()
        while await cache.tenant_for_key(secret) is not None:
            assert time.monotonic() - revoked_at < 1.0, "revoked key still served after 1 s"
            await asyncio.sleep(0.02)
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller


async def test_a_cache_started_after_the_revocation_never_serves_the_key(
    admin: ApiKeyAdmin, store: SqlApiKeyStore, tenant: Tenant
) -> None:
    key, secret = await admin.create(tenant_id=tenant.id, name="gone")
    await admin.revoke(key.id)
    cache = ApiKeyCache(store)
    await cache.refresh()
    assert await cache.tenant_for_key(secret) is None
