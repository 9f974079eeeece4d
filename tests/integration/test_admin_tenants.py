"""AdminService tenant RPCs through a real gRPC server (Runtime on Redis + SQLite).

Each bad request must answer INVALID_ARGUMENT / NOT_FOUND / ALREADY_EXISTS with a clear message
and leave the tenants exactly as they were.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from quotaplane.app.runtime import Runtime
from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc, types_pb2
from tests.harness.runtime import channel_to, runtime_settings

pytestmark = pytest.mark.timeout(60)

TOKEN = "admin-tenants-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
ACTIVE, SUSPENDED = types_pb2.Tenant.ACTIVE, types_pb2.Tenant.SUSPENDED


@pytest.fixture
async def runtime(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, sqlite_url: str
) -> AsyncIterator[Runtime]:
    await asyncio.to_thread(migrate.upgrade, sqlite_url)
    settings = runtime_settings(
        tmp_path,
        admin_token=TOKEN,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:admin",
        database_url=sqlite_url,
    )
    async with Runtime(settings) as started:
        yield started


@pytest.fixture
async def channel(runtime: Runtime) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_to(runtime) as chan:
        yield chan


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


async def _create(
    admin: admin_pb2_grpc.AdminServiceStub, name: str = "Acme", plan: str = "growth", **extra: str
) -> types_pb2.Tenant:
    request = admin_pb2.CreateTenantRequest(name=name, plan=plan, **extra)
    tenant: types_pb2.Tenant = await admin.CreateTenant(request, metadata=AUTH, timeout=10)
    return tenant


async def _all(admin: admin_pb2_grpc.AdminServiceStub) -> list[types_pb2.Tenant]:
    reply = await admin.ListTenants(admin_pb2.ListTenantsRequest(page_size=1000), metadata=AUTH)
    return list(reply.tenants)


async def _refused(call: object, request: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=AUTH, timeout=10)  # type: ignore[operator]
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


async def test_create_answers_an_active_tenant_with_a_uuid(
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    tenant = await _create(admin, name="  Acme Corp ", external_id="crm-1")
    assert uuid.UUID(tenant.id) and tenant.status == ACTIVE
    assert (tenant.name, tenant.plan, tenant.external_id) == ("Acme Corp", "growth", "crm-1")
    assert tenant.created_at.seconds > 0
    got = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=AUTH)
    assert got == tenant


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"name": "", "plan": "growth"}, grpc.StatusCode.INVALID_ARGUMENT, "name is required"),
        ({"name": "   ", "plan": "growth"}, grpc.StatusCode.INVALID_ARGUMENT, "name is required"),
        ({"name": "x" * 201, "plan": "growth"}, grpc.StatusCode.INVALID_ARGUMENT, "at most 200"),
        ({"name": "A", "plan": ""}, grpc.StatusCode.INVALID_ARGUMENT, "plan is required"),
        ({"name": "A", "plan": "gold"}, grpc.StatusCode.NOT_FOUND, "known plans: enterprise"),
        (
            {"name": "A", "plan": "growth", "external_id": "e" * 129},
            grpc.StatusCode.INVALID_ARGUMENT,
            "external_id",
        ),
    ],
)
async def test_bad_create_requests_are_refused_and_store_nothing(
    admin: admin_pb2_grpc.AdminServiceStub,
    fields: dict[str, str],
    code: grpc.StatusCode,
    words: str,
) -> None:
    await _create(admin, name="Existing")
    before = await _all(admin)
    details = await _refused(admin.CreateTenant, admin_pb2.CreateTenantRequest(**fields), code)
    assert words in details
    assert await _all(admin) == before


async def test_a_taken_external_id_already_exists(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    await _create(admin, external_id="crm-7")
    before = await _all(admin)
    request = admin_pb2.CreateTenantRequest(name="B", plan="growth", external_id="crm-7")
    details = await _refused(admin.CreateTenant, request, grpc.StatusCode.ALREADY_EXISTS)
    assert "external_id" in details
    assert await _all(admin) == before


@pytest.mark.parametrize(
    ("tenant_id", "code"),
    [
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT),
        (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_get_refuses_malformed_and_unknown_ids(
    admin: admin_pb2_grpc.AdminServiceStub, tenant_id: str, code: grpc.StatusCode
) -> None:
    await _refused(admin.GetTenant, admin_pb2.GetTenantRequest(tenant_id=tenant_id), code)


async def test_pages_walk_every_tenant_once_in_creation_order(
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    created = [(await _create(admin, name=f"T{i}")).id for i in range(5)]
    seen, token, pages = [], "", 0
    while True:
        request = admin_pb2.ListTenantsRequest(page_size=2, page_token=token)
        reply = await admin.ListTenants(request, metadata=AUTH)
        seen += [t.id for t in reply.tenants]
        pages, token = pages + 1, reply.next_page_token
        if not token:
            break
    assert seen == created and pages == 3


async def test_filters_select_by_plan_and_status(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    starter = await _create(admin, plan="starter")
    growth = await _create(admin, plan="growth")
    await admin.SuspendTenant(admin_pb2.SuspendTenantRequest(tenant_id=growth.id), metadata=AUTH)
    by_plan = await admin.ListTenants(admin_pb2.ListTenantsRequest(plan="starter"), metadata=AUTH)
    by_status = await admin.ListTenants(
        admin_pb2.ListTenantsRequest(status=SUSPENDED), metadata=AUTH
    )
    assert [t.id for t in by_plan.tenants] == [starter.id]
    assert [t.id for t in by_status.tenants] == [growth.id]


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"page_size": 1001}, grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
        ({"page_size": -1}, grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
        ({"page_token": "garbage"}, grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
        ({"plan": "gold"}, grpc.StatusCode.NOT_FOUND, "unknown plan"),
        ({"status": 9}, grpc.StatusCode.INVALID_ARGUMENT, "status"),
    ],
)
async def test_bad_list_requests_are_refused(
    admin: admin_pb2_grpc.AdminServiceStub,
    fields: dict[str, object],
    code: grpc.StatusCode,
    words: str,
) -> None:
    details = await _refused(admin.ListTenants, admin_pb2.ListTenantsRequest(**fields), code)  # type: ignore[arg-type]
    assert words in details


async def test_a_token_reused_with_other_filters_is_refused(
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    for _ in range(2):
        await _create(admin)
    first = await admin.ListTenants(admin_pb2.ListTenantsRequest(page_size=1), metadata=AUTH)
    request = admin_pb2.ListTenantsRequest(page_token=first.next_page_token, plan="growth")
    assert "other filters" in await _refused(
        admin.ListTenants, request, grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_a_plan_change_is_recorded_for_billing(
    admin: admin_pb2_grpc.AdminServiceStub, runtime: Runtime
) -> None:
    tenant = await _create(admin, plan="starter")
    request = admin_pb2.UpdateTenantPlanRequest(tenant_id=tenant.id, plan="enterprise")
    moved = await admin.UpdateTenantPlan(request, metadata=AUTH)
    assert (
        moved.plan == "enterprise"
        and moved.updated_at.ToDatetime() >= tenant.updated_at.ToDatetime()
    )
    assert runtime.database is not None
    async with runtime.database.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT plan FROM plan_changes WHERE tenant_id = :t ORDER BY id"),
            {"t": tenant.id},
        )
        assert [r[0] for r in rows] == ["starter", "enterprise"]


@pytest.mark.parametrize(
    ("plan", "code"),
    [("", grpc.StatusCode.INVALID_ARGUMENT), ("gold", grpc.StatusCode.NOT_FOUND)],
)
async def test_a_plan_change_to_no_known_plan_changes_nothing(
    admin: admin_pb2_grpc.AdminServiceStub, plan: str, code: grpc.StatusCode
) -> None:
    tenant = await _create(admin, plan="starter")
    request = admin_pb2.UpdateTenantPlanRequest(tenant_id=tenant.id, plan=plan)
    assert "plan" in await _refused(admin.UpdateTenantPlan, request, code)
    assert await _all(admin) == [tenant]


async def test_suspend_then_resume(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    tenant = await _create(admin)
    suspended = await admin.SuspendTenant(
        admin_pb2.SuspendTenantRequest(tenant_id=tenant.id, reason="unpaid invoice"), metadata=AUTH
    )
    assert (suspended.status, suspended.suspended_reason) == (SUSPENDED, "unpaid invoice")
    resumed = await admin.ResumeTenant(
        admin_pb2.ResumeTenantRequest(tenant_id=tenant.id), metadata=AUTH
    )
    assert (resumed.status, resumed.suspended_reason) == (ACTIVE, "")


async def test_a_too_long_reason_changes_nothing(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    tenant = await _create(admin)
    request = admin_pb2.SuspendTenantRequest(tenant_id=tenant.id, reason="r" * 501)
    assert "at most 500" in await _refused(
        admin.SuspendTenant, request, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await _all(admin) == [tenant]


@pytest.mark.parametrize("rpc", ["SuspendTenant", "ResumeTenant"])
async def test_suspend_and_resume_of_an_unknown_tenant_are_not_found(
    admin: admin_pb2_grpc.AdminServiceStub, rpc: str
) -> None:
    request_class = getattr(admin_pb2, f"{rpc}Request")
    request = request_class(tenant_id=str(uuid.uuid4()))
    await _refused(getattr(admin, rpc), request, grpc.StatusCode.NOT_FOUND)


async def test_check_quota_sees_a_suspension_within_a_second(
    admin: admin_pb2_grpc.AdminServiceStub, channel: grpc.aio.Channel
) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    tenant = await _create(admin)
    check = quota_pb2.CheckQuotaRequest(tenant_id=tenant.id, dry_run=True)
    assert (await quota.CheckQuota(check, timeout=5)).allowed
    await admin.SuspendTenant(admin_pb2.SuspendTenantRequest(tenant_id=tenant.id), metadata=AUTH)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while (await quota.CheckQuota(check, timeout=5)).code != quota_pb2.CheckQuotaResponse.SUSPENDED:
        assert loop.time() < deadline, "suspension not seen by CheckQuota within 1 s"
        await asyncio.sleep(0.05)
