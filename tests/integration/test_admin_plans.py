"""ListPlans and ReloadPlans through a real gRPC server (Runtime on Redis + SQLite).

A reload swaps the plans for every reader (the quota engine included); a file that fails
validation, or that drops a plan a tenant is on, is refused and the running plans stay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from quotaplane.app.runtime import Runtime
from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc, types_pb2
from tests.harness.runtime import channel_to, runtime_settings

pytestmark = pytest.mark.timeout(60)

TOKEN = "admin-plans-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SEED = """\
plans:
  starter:  {price_per_1000_requests: 0.05, monthly_quota: 10000}
  growth:   {price_per_1000_requests: 0.04, monthly_quota: 50000}
  enterprise: {price_per_1000_requests: 0.03, monthly_quota: 200000}
"""


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.yaml"
    path.write_text(SEED)
    return path


@pytest.fixture
async def channel(
    tmp_path: Path, plans_file: Path, redis_url: str, redis_key_prefix: str, sqlite_url: str
) -> AsyncIterator[grpc.aio.Channel]:
    await asyncio.to_thread(migrate.upgrade, sqlite_url)
    settings = runtime_settings(
        tmp_path,
        admin_token=TOKEN,
        plans_path=plans_file,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:plans",
        database_url=sqlite_url,
    )
    async with Runtime(settings) as runtime, channel_to(runtime) as chan:
        yield chan


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


async def _write(path: Path, text: str) -> None:
    await asyncio.to_thread(path.write_text, text)


async def _plans(admin: admin_pb2_grpc.AdminServiceStub) -> admin_pb2.ListPlansResponse:
    reply: admin_pb2.ListPlansResponse = await admin.ListPlans(
        admin_pb2.ListPlansRequest(), metadata=AUTH, timeout=10
    )
    return reply


async def _reload(admin: admin_pb2_grpc.AdminServiceStub) -> admin_pb2.ListPlansResponse:
    reply: admin_pb2.ListPlansResponse = await admin.ReloadPlans(
        admin_pb2.ReloadPlansRequest(), metadata=AUTH, timeout=10
    )
    return reply


async def test_list_plans_shows_the_seed_plans_with_prices_and_limits(
    admin: admin_pb2_grpc.AdminServiceStub, plans_file: Path
) -> None:
    reply = await _plans(admin)
    assert [p.name for p in reply.plans] == ["enterprise", "growth", "starter"]
    assert reply.source == str(plans_file) and reply.loaded_at.seconds > 0
    growth = reply.plans[1]
    [requests] = growth.metrics
    assert (growth.currency, growth.base_fee) == ("USD", "0")
    assert (requests.metric, requests.charge_model) == ("requests", "package")
    assert requests.price == "0.04 USD per started 1,000"
    assert [(lim.window, lim.limit, lim.overage_policy) for lim in requests.limits] == [
        (types_pb2.WINDOW_MONTH, 50000, types_pb2.OVERAGE_POLICY_BLOCK)
    ]


async def test_a_reload_adds_plans_and_new_tenants_can_use_them(
    admin: admin_pb2_grpc.AdminServiceStub, plans_file: Path
) -> None:
    await _write(
        plans_file, SEED + "  scale: {price_per_1000_requests: 0.02, monthly_quota: 900000}\n"
    )
    reloaded = await _reload(admin)
    assert "scale" in [p.name for p in reloaded.plans]
    assert await _plans(admin) == reloaded
    request = admin_pb2.CreateTenantRequest(name="Big", plan="scale")
    assert (await admin.CreateTenant(request, metadata=AUTH)).plan == "scale"


async def test_the_quota_engine_uses_reloaded_limits(
    admin: admin_pb2_grpc.AdminServiceStub, channel: grpc.aio.Channel, plans_file: Path
) -> None:
    tenant = await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(name="A", plan="growth"), metadata=AUTH
    )
    await _write(plans_file, SEED.replace("50000", "60000"))
    await _reload(admin)
    check = quota_pb2.CheckQuotaRequest(tenant_id=tenant.id, dry_run=True)
    reply = await quota_pb2_grpc.QuotaServiceStub(channel).CheckQuota(check, timeout=5)
    assert [lim.limit for lim in reply.limits] == [60000]


async def test_an_invalid_file_is_refused_with_every_problem_and_the_plans_stay(
    admin: admin_pb2_grpc.AdminServiceStub, plans_file: Path
) -> None:
    before = await _plans(admin)
    await _write(
        plans_file,
        "plans:\n  growth: {price_per_1000_requests: -1, monthly_quota: 50000, colour: red}\n",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reload(admin)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert str(plans_file) in details and "colour" in details and "price" in details
    assert await _plans(admin) == before


async def test_a_missing_file_is_refused_and_the_plans_stay(
    admin: admin_pb2_grpc.AdminServiceStub, plans_file: Path
) -> None:
    before = await _plans(admin)
    await asyncio.to_thread(plans_file.unlink)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reload(admin)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot read plans file" in (caught.value.details() or "")
    assert await _plans(admin) == before


async def test_dropping_a_plan_in_use_is_refused_naming_it(
    admin: admin_pb2_grpc.AdminServiceStub, plans_file: Path
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="A", plan="starter"), metadata=AUTH)
    before = await _plans(admin)
    await _write(plans_file, SEED.replace("  starter:", "  # starter:"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reload(admin)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "starter" in (caught.value.details() or "")
    assert await _plans(admin) == before


async def test_dropping_an_unused_plan_is_allowed(
    admin: admin_pb2_grpc.AdminServiceStub, plans_file: Path
) -> None:
    await _write(plans_file, SEED.replace("  starter:", "  # starter:"))
    reloaded = await _reload(admin)
    assert [p.name for p in reloaded.plans] == ["enterprise", "growth"]
