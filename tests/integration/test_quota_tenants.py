"""The SQL tenant store on SQLite and Postgres, and the in-process directory that caches it.

A running directory must see a plan change or a suspension within ``cache_ttl`` (1 s), and a
tenant created a moment ago must be found on its first request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.errors import AlreadyExists, NotFound
from quotaplane.domain.tenants.model import Tenant, TenantStatus
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)

TTL = timedelta(seconds=1)


@pytest.fixture
def store(database: AsyncEngine) -> SqlTenantStore:
    return SqlTenantStore(database)


async def test_create_then_get_round_trips(store: SqlTenantStore) -> None:
    created = await store.create(name="Acme", plan="growth", external_id=f"crm-{uuid.uuid4()}")
    assert await store.get(created.id) == created
    assert created.status is TenantStatus.ACTIVE and created.version == 1


async def test_a_duplicate_external_id_already_exists(store: SqlTenantStore) -> None:
    external = f"crm-{uuid.uuid4()}"
    await store.create(name="A", plan="growth", external_id=external)
    with pytest.raises(AlreadyExists):
        await store.create(name="B", plan="growth", external_id=external)


async def test_every_change_bumps_version_and_updated_at(store: SqlTenantStore) -> None:
    tenant = await store.create(name="A", plan="starter")
    moved = await store.update_plan(tenant.id, "growth")
    suspended = await store.suspend(tenant.id, "unpaid")
    resumed = await store.resume(tenant.id)
    assert [t.version for t in (moved, suspended, resumed)] == [2, 3, 4]
    assert moved.plan == "growth" and suspended.suspended_reason == "unpaid"
    assert resumed.status is TenantStatus.ACTIVE and resumed.suspended_reason is None
    assert tenant.updated_at <= moved.updated_at <= suspended.updated_at <= resumed.updated_at


async def test_changing_an_unknown_tenant_is_not_found(store: SqlTenantStore) -> None:
    with pytest.raises(NotFound):
        await store.suspend(str(uuid.uuid4()))


async def test_list_changed_since_returns_only_recent_changes(store: SqlTenantStore) -> None:
    old = await store.create(name="old", plan="starter")
    marker = datetime.now(UTC) + timedelta(milliseconds=5)
    await asyncio.sleep(0.02)
    new = await store.create(name="new", plan="starter")
    changed = {t.id for t in await store.list_changed_since(marker)}
    assert new.id in changed and old.id not in changed


async def test_list_page_walks_every_tenant_in_id_order(store: SqlTenantStore) -> None:
    made = {(await store.create(name=f"p{i}", plan="starter")).id for i in range(5)}
    seen: list[str] = []
    after = None
    while page := await store.list_page(after=after, size=2):
        seen += [t.id for t in page]
        after = page[-1].id
    assert seen == sorted(seen) and made <= set(seen)


async def _until(predicate: object, within: float) -> float:
    started = time.monotonic()
    while not await predicate():  # type: ignore[operator]
        if time.monotonic() - started > within:
            raise AssertionError(f"not seen within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def running_directory(store: SqlTenantStore) -> AsyncIterator[TenantDirectory]:
    directory = TenantDirectory(store, ttl=TTL)
    await directory.refresh()
    poller = asyncio.create_task(directory.run())
    try:
        yield directory
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)


async def test_a_running_directory_sees_a_suspension_within_the_ttl(
    store: SqlTenantStore, running_directory: TenantDirectory
) -> None:
    tenant = await store.create(name="s", plan="starter")
    assert (await running_directory.get(tenant.id)).active
    await store.suspend(tenant.id)

    async def suspended() -> bool:
        return not (await running_directory.get(tenant.id)).active

    assert await _until(suspended, within=TTL.total_seconds()) <= TTL.total_seconds()


async def test_a_running_directory_sees_a_plan_change_within_the_ttl(
    store: SqlTenantStore, running_directory: TenantDirectory
) -> None:
    tenant = await store.create(name="p", plan="starter")
    await running_directory.get(tenant.id)
    await store.update_plan(tenant.id, "enterprise")

    async def moved() -> bool:
        return (await running_directory.get(tenant.id)).plan == "enterprise"

    await _until(moved, within=TTL.total_seconds())


async def test_a_tenant_created_after_start_is_found_on_its_first_request(
    store: SqlTenantStore,
) -> None:
    directory = TenantDirectory(store, ttl=TTL)
    await directory.refresh()
    tenant = await store.create(name="late", plan="starter")
    assert (await directory.get(tenant.id)).id == tenant.id


class CountingStore(SqlTenantStore):
    """The real store, counting single-tenant lookups (what a flood of unknown ids costs)."""

    lookups = 0

    async def get(self, tenant_id: str) -> Tenant | None:
        self.lookups += 1
        return await super().get(tenant_id)


async def test_unknown_ids_cost_one_lookup_until_the_negative_entry_expires(
    database: AsyncEngine,
) -> None:
    store = CountingStore(database)
    clock = [100.0]
    directory = TenantDirectory(store, ttl=TTL, monotonic=lambda: clock[0])
    tenant_id = str(uuid.uuid4())
    results = await asyncio.gather(
        *(directory.get(tenant_id) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, NotFound) for r in results)
    with pytest.raises(NotFound):
        await directory.get(tenant_id)
    assert store.lookups == 1
    clock[0] += directory.poll_interval + 0.01
    with pytest.raises(NotFound):
        await directory.get(tenant_id)
    assert store.lookups == 2
