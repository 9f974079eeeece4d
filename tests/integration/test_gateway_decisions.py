"""The domain Gateway's rules on real stores (SQLite keys and tenants, Redis counters): the order
of the checks, misconfigured routes as counted decisions logged once per (route, plan)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from quotaplane.domain.quota.gateway import Gateway, GatewayRequest, Verdict
from quotaplane.domain.tenants.api_keys import ApiKeyAdmin
from quotaplane.services.key_cache import ApiKeyCache
from quotaplane.storage.sql.api_keys import SqlApiKeyStore
from quotaplane.storage.sql.engine import create_async_engine_for
from tests.integration.test_quota_engine import (
    Quota,
    catalog,
    counter_store,
    quota,
    sqlite_ledger,
)

pytestmark = pytest.mark.timeout(60)
__all__ = ["catalog", "counter_store", "quota", "sqlite_ledger"]  # fixtures this module reuses


class Misconfigurations:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, route: str, plan: str, problem: str) -> None:
        self.seen.append((route, plan, problem))


@pytest.fixture
async def keys(sqlite_ledger: str, quota: Quota) -> AsyncIterator[tuple[ApiKeyAdmin, ApiKeyCache]]:
    database = create_async_engine_for(sqlite_ledger)
    store = SqlApiKeyStore(database)
    cache = ApiKeyCache(store)
    await cache.refresh()
    try:
        yield ApiKeyAdmin(store, quota.tenants), cache
    finally:
        await database.dispose()


async def _tenant_key(quota: Quota, admin: ApiKeyAdmin, plan: str = "exact") -> tuple[str, str]:
    tenant_id = await quota.tenant(plan)
    _, secret = await admin.create(tenant_id=tenant_id, name="k")
    return tenant_id, secret


async def test_the_key_is_checked_before_the_route(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]
) -> None:
    gateway = Gateway(keys[1], quota.engine)
    for key in (None, "", "qp_live_" + "x" * 43):
        decision = await gateway.authorize(GatewayRequest(key, "no such metric", cost="abc"))
        assert decision.verdict is Verdict.UNAUTHENTICATED


async def test_suspension_is_checked_before_the_route(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]
) -> None:
    tenant_id, secret = await _tenant_key(quota, keys[0])
    await quota.tenants.suspend(tenant_id, "test")
    await quota.directory.refresh()
    gateway = Gateway(keys[1], quota.engine)
    for metric, cost in (("rating.bulk", "1"), ("requests", "-1"), ("requests", "1")):
        decision = await gateway.authorize(GatewayRequest(secret, metric, cost=cost))
        assert decision.verdict is Verdict.SUSPENDED, (metric, cost)


async def test_a_misconfigured_route_is_counted_every_time_and_logged_once(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache], caplog: pytest.LogCaptureFixture
) -> None:
    _, secret = await _tenant_key(quota, keys[0])
    seen = Misconfigurations()
    gateway = Gateway(keys[1], quota.engine, on_misconfigured=seen)
    caplog.set_level(logging.ERROR, logger="quotaplane.domain.quota.gateway")
    for _ in range(3):
        bulk = await gateway.authorize(GatewayRequest(secret, "rating.bulk", route="bulk"))
        cost = await gateway.authorize(GatewayRequest(secret, "requests", "²", route="sup"))
        assert bulk.verdict is cost.verdict is Verdict.MISCONFIGURED
    assert "'rating.bulk' is not part of plan 'exact'" in bulk.reason
    assert "route cost '²'" in cost.reason
    assert [(route, plan) for route, plan, _ in seen.seen] == [
        ("bulk", "exact"),
        ("sup", "exact"),
    ] * 3
    logged = [r for r in caplog.records if "cannot be metered" in r.getMessage()]
    assert sorted(r.__dict__["route"] for r in logged) == ["bulk", "sup"]


async def test_a_good_route_is_charged_its_cost(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]
) -> None:
    tenant_id, secret = await _tenant_key(quota, keys[0])
    decision = await Gateway(keys[1], quota.engine).authorize(
        GatewayRequest(secret, "requests", cost="7")
    )
    assert decision.verdict is Verdict.ALLOWED and decision.tenant_id == tenant_id
    assert decision.decision is not None and decision.decision.limits[0].remaining == 993
