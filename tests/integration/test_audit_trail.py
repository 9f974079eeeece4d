"""The audit trail: a scripted operator session through the `quotaplane` CLI, then
`quotaplane audit` lists each mutation, in order, with the credential's name and the result;
reads are not recorded, secrets never are, and the listing filters and pages."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from quotaplane.app.runtime import Runtime
from quotaplane.domain.windows import Period
from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from tests.harness.runtime import channel_to, runtime_settings

pytestmark = pytest.mark.timeout(180)

TOKEN = "audit-trail-admin-token"
BIN = Path(sys.executable).parent
Cli = Callable[..., Awaitable[tuple[int, str, str]]]
NEW_PLANS = """\
plans:
  starter:  {price_per_1000_requests: 0.06, monthly_quota: 10000}
  growth:   {price_per_1000_requests: 0.04, monthly_quota: 50000}
  enterprise: {price_per_1000_requests: 0.03, monthly_quota: 200000}
"""


@pytest.fixture
async def runtime(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, sqlite_url: str
) -> AsyncIterator[Runtime]:
    await asyncio.to_thread(migrate.upgrade, sqlite_url)
    settings = runtime_settings(
        tmp_path,
        admin_token=TOKEN,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:audit",
        database_url=sqlite_url,
    )
    async with Runtime(settings) as running:
        yield running


@pytest.fixture
def cli(runtime: Runtime) -> Cli:
    target = f"127.0.0.1:{runtime.grpc.port}"

    async def run(*args: str) -> tuple[int, str, str]:
        argv = [str(BIN / "quotaplane"), *args, "--target", target, "--admin-token", TOKEN]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        return int(process.returncode or 0), out.decode(), err.decode()

    return run


async def _json(cli: Cli, *args: str) -> Any:
    code, out, err = await cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_a_scripted_operator_session_is_listed_in_order_with_the_credential(
    cli: Cli, tmp_path: Path
) -> None:
    tenant = (await _json(cli, "tenants", "create", "--name", "Acme", "--plan", "starter"))["id"]
    created = await _json(cli, "keys", "create", tenant, "--name", "ci")
    await _json(cli, "tenants", "override", tenant, "--set", "monthly_quota=7")
    plans = tmp_path / "new-plans.yaml"
    plans.write_text(NEW_PLANS)
    await _json(cli, "plans", "apply", str(plans))
    await _json(cli, "tenants", "suspend", tenant, "--reason", "late payment")
    code, _, err = await cli("tenants", "set-plan", tenant, "nosuch")
    assert code == 4 and "NOT_FOUND" in err
    await _json(cli, "plans", "rollback", "1")
    await _json(cli, "tenants", "list")  # a read: not in the trail
    code, listed, _ = await cli("plans", "list")  # reads too
    assert code == 0 and "plans version 3" in listed
    code, history, _ = await cli("plans", "history")
    assert code == 0 and "rollback to version 1" in history.splitlines()[1]
    await _json(cli, "tenants", "get", tenant)  # the override's GetTenant: a read too

    events = (await _json(cli, "audit"))["events"]
    assert [(e["method"].rpartition("/")[2], e["result"]) for e in events] == [
        ("CreateTenant", "OK"),
        ("CreateApiKey", "OK"),
        ("SetTenantOverrides", "OK"),
        ("ApplyPlans", "OK"),
        ("SuspendTenant", "OK"),
        ("UpdateTenantPlan", "NOT_FOUND"),
        ("RollbackPlans", "OK"),
    ]
    assert {e["credential"] for e in events} == {"admin"}
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    assert all(e["tenant_id"] == tenant for e in events if "Plans" not in e["method"])
    assert json.loads(events[2]["request"])["document"] == '{"monthly_quota": "7"}'
    assert json.loads(events[4]["request"])["reason"] == "late payment"
    assert "unknown plan 'nosuch'" in events[5]["message"]
    trail = json.dumps(events)
    assert created["secret"] not in trail and TOKEN not in trail

    code, table, _ = await cli("audit", "--method", "SuspendTenant")
    assert code == 0 and "SuspendTenant" in table and "CreateTenant" not in table
    full = "/quotaplane.v1.AdminService/SuspendTenant"
    assert len((await _json(cli, "audit", "--method", full))["events"]) == 1
    by_tenant = (await _json(cli, "audit", "--tenant-id", tenant))["events"]
    assert len(by_tenant) == 5


async def test_the_listing_pages_with_tokens_bound_to_its_filters(
    runtime: Runtime, cli: Cli
) -> None:
    for name in ("a", "b", "c"):
        await _json(cli, "tenants", "create", "--name", name, "--plan", "starter")
    first = await _json(cli, "audit", "--page-size", "2")
    assert len(first["events"]) == 2 and first["next_page_token"]
    second = await _json(cli, "audit", "--page-size", "2", "--page-token", first["next_page_token"])
    assert len(second["events"]) == 1 and not second.get("next_page_token")
    code, out, err = await cli("audit", "--page-size", "2")  # the table, and how to go on
    assert code == 0 and f"next page: --page-token {first['next_page_token']}" in err
    assert "next page" not in out
    code, _, err = await cli(
        "audit", "--method", "CreateTenant", "--page-token", first["next_page_token"]
    )
    assert code == 2 and "other filters" in err
    later = await _json(cli, "audit", "--start", "2999-01-01")
    assert not later.get("events")
    earlier = await _json(cli, "audit", "--end", "2000-01-01")
    assert not earlier.get("events")
    during = await _json(cli, "audit", "--start", "2000-01-01", "--end", "2999-01-01")
    assert len(during["events"]) == 3
    code, _, err = await cli("audit", "--start", "2026-12-02", "--end", "2026-12-01")
    assert code == 2 and "end must be after start" in err


async def test_invoices_are_audited_when_finalized_not_when_drafted(runtime: Runtime) -> None:
    async with channel_to(runtime) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        quota = quota_pb2_grpc.QuotaServiceStub(channel)
        tenant = await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="Bill", plan="growth"), timeout=10
        )
        period = str(Period.of(datetime.now(UTC)))
        draft = quota_pb2.GenerateInvoiceRequest(tenant_id=tenant.id, period=period)
        await quota.GenerateInvoice(draft, timeout=30)  # the billing token: a draft
        final = quota_pb2.GenerateInvoiceRequest(
            tenant_id=tenant.id, period=period, finalize=True, force=True
        )
        invoice = await quota.GenerateInvoice(final, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError):
            await admin.VoidInvoice(admin_pb2.VoidInvoiceRequest(invoice_id="nope"), timeout=10)
        listed = await admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(tenant_id=tenant.id), timeout=10
        )
    methods = [(e.method.rpartition("/")[2], e.result, e.credential) for e in listed.events]
    assert methods == [("CreateTenant", "OK", "admin"), ("GenerateInvoice", "OK", "admin")]
    assert invoice.status == invoice.FINALIZED
