"""Operator controls on two replicas sharing Postgres and Redis (issue 19, items 1, 2, 5).

Replica A takes the operator's calls; replica B decides. Plans applied (or rolled back) on A
are what B decides under within 1 s, measured; an invalid document changes nothing anywhere;
a tenant override set on A limits the tenant on B within 1 s and prices its invoice with the
override named on the line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from quotaplane.app.runtime import Runtime
from quotaplane.domain.windows import Period
from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from tests.harness.runtime import channel_to, runtime_settings

pytestmark = pytest.mark.timeout(120)

TOKEN = "operator-controls-admin-token"
SEED = """\
plans:
  starter:  {price_per_1000_requests: 0.05, monthly_quota: 10000}
  growth:   {price_per_1000_requests: 0.04, monthly_quota: 50000}
"""
TIGHTER = """\
# the same plans, starter's quota cut to 3
plans:
  starter:  {price_per_1000_requests: 0.05, monthly_quota: 3}
  growth:   {price_per_1000_requests: 0.04, monthly_quota: 50000}
"""
FRESHNESS_S = 1.0  # QUOTAPLANE_CACHE_TTL's default: the bound every replica must meet


@dataclass
class Replica:
    admin: admin_pb2_grpc.AdminServiceStub
    quota: quota_pb2_grpc.QuotaServiceStub


@dataclass
class Pair:
    a: Replica
    b: Replica


@pytest.fixture
def database_url(fresh_postgres_database: Callable[[], str]) -> Iterator[str]:
    url = fresh_postgres_database()
    migrate.upgrade(url)
    yield url


@pytest.fixture
async def pair(
    tmp_path: Path, database_url: str, redis_url: str, redis_key_prefix: str
) -> AsyncIterator[Pair]:
    plans = tmp_path / "plans.yaml"
    plans.write_text(SEED)
    settings_a = runtime_settings(
        tmp_path / "a",
        admin_token=TOKEN,
        plans_path=plans,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:ctl",
        database_url=database_url,
    )
    # The same Redis prefix and ledger: two replicas of one deployment.
    settings_b = dataclasses.replace(settings_a, data_dir=tmp_path / "b" / "data")
    async with (
        Runtime(settings_a) as a,
        Runtime(settings_b) as b,
        channel_to(a) as chan_a,
        channel_to(b) as chan_b,
    ):
        yield Pair(
            Replica(
                admin_pb2_grpc.AdminServiceStub(chan_a), quota_pb2_grpc.QuotaServiceStub(chan_a)
            ),
            Replica(
                admin_pb2_grpc.AdminServiceStub(chan_b), quota_pb2_grpc.QuotaServiceStub(chan_b)
            ),
        )


async def _tenant(replica: Replica, plan: str = "starter") -> str:
    req = admin_pb2.CreateTenantRequest(name="Acme", plan=plan)
    return str((await replica.admin.CreateTenant(req, timeout=10)).id)


async def _month_limit(replica: Replica, tenant_id: str) -> int:
    req = quota_pb2.CheckQuotaRequest(tenant_id=tenant_id, dry_run=True)
    reply = await replica.quota.CheckQuota(req, timeout=10)
    return int(next(lim.limit for lim in reply.limits if lim.name.endswith("/month")))


async def _seconds_until(check: Callable[[], Awaitable[bool]], bound: float = 5.0) -> float:
    """Seconds until ``check`` holds, polled every 10 ms (fails after ``bound``)."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < bound, "the change never arrived"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def _versions(replica: Replica) -> list[admin_pb2.PlanVersion]:
    reply = await replica.admin.ListPlanVersions(admin_pb2.ListPlanVersionsRequest(), timeout=10)
    return list(reply.versions)


async def test_plans_applied_on_one_replica_are_decided_on_the_other_within_a_second(
    pair: Pair,
) -> None:
    tenant = await _tenant(pair.a)
    assert [v.version for v in await _versions(pair.b)] == [1]  # both started, one version
    assert await _month_limit(pair.b, tenant) == 10000

    applied = await pair.a.admin.ApplyPlans(
        admin_pb2.ApplyPlansRequest(document=TIGHTER, source="tighter.yaml"), timeout=10
    )
    assert applied.changed and applied.version.version == 2
    assert applied.version.applied_by == "admin"

    async def b_decides_under_3() -> bool:
        return await _month_limit(pair.b, tenant) == 3

    lag = await _seconds_until(b_decides_under_3)
    print(f"apply on A -> B decides under version 2: {lag * 1000:.0f} ms")
    assert lag < FRESHNESS_S
    b_plans = await pair.b.admin.ListPlans(admin_pb2.ListPlansRequest(), timeout=10)
    assert b_plans.version == 2

    again = await pair.a.admin.ApplyPlans(
        admin_pb2.ApplyPlansRequest(document=TIGHTER + "\n# a comment\n"), timeout=10
    )
    assert not again.changed and again.version.version == 2  # same plans: nothing stored

    rolled = await pair.a.admin.RollbackPlans(admin_pb2.RollbackPlansRequest(version=1), timeout=10)
    assert rolled.changed and rolled.version.version == 3
    assert rolled.version.note == "rollback to version 1"

    async def b_decides_under_10000() -> bool:
        return await _month_limit(pair.b, tenant) == 10000

    lag = await _seconds_until(b_decides_under_10000)
    print(f"rollback on A -> B decides under version 3: {lag * 1000:.0f} ms")
    assert lag < FRESHNESS_S
    history = await _versions(pair.b)
    assert [v.version for v in history] == [3, 2, 1]
    assert history[0].digest == history[2].digest != history[1].digest


async def test_an_invalid_plans_document_changes_nothing_on_any_replica(pair: Pair) -> None:
    tenant = await _tenant(pair.a, plan="growth")
    invalid = "plans:\n  starter: {price_per_1000_requests: -1, monthly_quota: 3}\n"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.a.admin.ApplyPlans(admin_pb2.ApplyPlansRequest(document=invalid), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "plans.starter.price_per_1000_requests" in (refused.value.details() or "")
    drops_growth = "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 3}\n"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.a.admin.ApplyPlans(
            admin_pb2.ApplyPlansRequest(document=drops_growth), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await asyncio.sleep(FRESHNESS_S + 0.2)  # longer than any replica takes to see a version
    for replica in (pair.a, pair.b):
        assert [v.version for v in await _versions(replica)] == [1]
        listed = await replica.admin.ListPlans(admin_pb2.ListPlansRequest(), timeout=10)
        assert listed.version == 1 and {p.name for p in listed.plans} == {"starter", "growth"}
        assert await _month_limit(replica, tenant) == 50000


async def test_an_override_set_on_one_replica_limits_and_prices_on_the_other(pair: Pair) -> None:
    tenant = await _tenant(pair.a)
    assert await _month_limit(pair.b, tenant) == 10000  # B holds the tenant in memory
    deal = "metrics: {requests: {limits: {month: 5}, charge: {model: per_unit, unit_price: '0.5'}}}"
    updated = await pair.a.admin.SetTenantOverrides(
        admin_pb2.SetTenantOverridesRequest(tenant_id=tenant, document=deal), timeout=10
    )
    assert json.loads(updated.overrides)["metrics"]["requests"]["limits"] == {"month": "5"}

    async def b_limits_at_5() -> bool:
        return await _month_limit(pair.b, tenant) == 5

    lag = await _seconds_until(b_limits_at_5)
    print(f"override on A -> B decides with it: {lag * 1000:.0f} ms")
    assert lag < FRESHNESS_S
    shown = await pair.b.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant), timeout=10)
    assert shown.overrides == updated.overrides

    allowed = 0
    for index in range(7):
        req = quota_pb2.CheckQuotaRequest(tenant_id=tenant, request_id=f"r{index}")
        allowed += (await pair.b.quota.CheckQuota(req, timeout=10)).allowed
    assert allowed == 5  # the override's limit, not the plan's 10000

    period = str(Period.of(datetime.now(UTC)))
    invoice = await pair.a.quota.GenerateInvoice(
        quota_pb2.GenerateInvoiceRequest(tenant_id=tenant, period=period), timeout=30
    )
    # The period is cut where the override began (like a plan change): the plan before, the
    # override after, each line in its span; this hour's usage is billed under the terms in
    # force at the hour's start (the ledger keeps usage per hour), i.e. the plan's.
    before, after = [line for line in invoice.lines if line.metric == "requests"]
    assert (before.override, before.unit_price) == ("", "0.05")
    changed = "metrics.requests.charge.model, metrics.requests.charge.unit_price"
    assert after.override == f"{changed}, metrics.requests.limits.month"
    assert after.unit_price == "0.5"
    assert before.quantity + after.quantity == 5  # all of it at 5 (0 unless an hour began)
    assert invoice.plan_version == 1


async def test_an_invalid_override_is_refused_and_clearing_restores_the_plan(pair: Pair) -> None:
    tenant = await _tenant(pair.a)
    bad = "{monthly_quota: -5, base_fee: '1.234'}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.a.admin.SetTenantOverrides(
            admin_pb2.SetTenantOverridesRequest(tenant_id=tenant, document=bad), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "monthly_quota: must not be negative" in details and "base_fee" in details
    seed_form = "{monthly_quota: 7}"
    await pair.a.admin.SetTenantOverrides(
        admin_pb2.SetTenantOverridesRequest(tenant_id=tenant, document=seed_form), timeout=10
    )

    async def b_limits_at(limit: int) -> bool:
        return await _month_limit(pair.b, tenant) == limit

    assert await _seconds_until(lambda: b_limits_at(7)) < FRESHNESS_S
    cleared = await pair.a.admin.ClearTenantOverrides(
        admin_pb2.ClearTenantOverridesRequest(tenant_id=tenant), timeout=10
    )
    assert cleared.overrides == ""
    assert await _seconds_until(lambda: b_limits_at(10000)) < FRESHNESS_S


async def test_plans_or_a_plan_change_that_an_override_no_longer_fits_are_refused(
    pair: Pair,
) -> None:
    tenant = await _tenant(pair.a)
    fee = admin_pb2.SetTenantOverridesRequest(tenant_id=tenant, document="{base_fee: '1.50'}")
    await pair.a.admin.SetTenantOverrides(fee, timeout=10)
    yen_growth = SEED.replace(
        "0.04, monthly_quota: 50000}", "4, monthly_quota: 50000, currency: JPY}"
    )
    applied = await pair.a.admin.ApplyPlans(
        admin_pb2.ApplyPlansRequest(document=yen_growth), timeout=10
    )
    assert applied.changed  # the tenant is on starter: its override still fits
    move = admin_pb2.UpdateTenantPlanRequest(tenant_id=tenant, plan="growth")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.a.admin.UpdateTenantPlan(move, timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "base_fee" in (refused.value.details() or "")
    yen_starter = yen_growth.replace(
        "0.05, monthly_quota: 10000}", "5, monthly_quota: 10000, currency: JPY}"
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.a.admin.ApplyPlans(admin_pb2.ApplyPlansRequest(document=yen_starter), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert tenant in (refused.value.details() or "")
    assert [v.version for v in await _versions(pair.b)] == [2, 1]


async def test_concurrent_applies_on_two_replicas_store_one_version_per_change(
    pair: Pair,
) -> None:
    same = admin_pb2.ApplyPlansRequest(document=TIGHTER)
    answers = await asyncio.gather(
        *(replica.admin.ApplyPlans(same, timeout=10) for replica in (pair.a, pair.b) * 3)
    )
    assert {answer.version.version for answer in answers} == {2}
    assert sum(answer.changed for answer in answers) == 1
    documents = [SEED.replace("10000", str(n)) for n in (11, 12, 13, 14)]
    replicas = (pair.a, pair.b, pair.a, pair.b)
    await asyncio.gather(
        *(
            replica.admin.ApplyPlans(admin_pb2.ApplyPlansRequest(document=doc), timeout=10)
            for replica, doc in zip(replicas, documents, strict=True)
        )
    )
    assert [v.version for v in await _versions(pair.a)] == [6, 5, 4, 3, 2, 1]
