"""ListInvoices, GetInvoice and VoidInvoice over real gRPC, on SQLite and Postgres.

Invoices are made by the real GenerateInvoice; a paid invoice is set up the way the Stripe
webhook would leave it (status 'paid' in the ledger).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from quotaplane.app.runtime import Runtime
from quotaplane.domain.windows import Period
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc, types_pb2
from tests.harness.runtime import channel_to, runtime_settings

pytestmark = pytest.mark.timeout(90)

TOKEN = "admin-invoices-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
THIS_MONTH = str(Period.of(datetime.now(UTC)))
LAST_MONTH = str(Period.of(datetime.now(UTC)).previous())
DRAFT, FINALIZED, VOID = (
    types_pb2.Invoice.DRAFT,
    types_pb2.Invoice.FINALIZED,
    types_pb2.Invoice.VOID,
)


@pytest.fixture
async def runtime(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, ledger_url: str
) -> AsyncIterator[Runtime]:
    settings = runtime_settings(
        tmp_path,
        admin_token=TOKEN,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:invoices",
        database_url=ledger_url,
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


@pytest.fixture
def quota(channel: grpc.aio.Channel) -> quota_pb2_grpc.QuotaServiceStub:
    return quota_pb2_grpc.QuotaServiceStub(channel)


async def _tenant(admin: admin_pb2_grpc.AdminServiceStub) -> str:
    request = admin_pb2.CreateTenantRequest(name="Acme", plan="growth")
    tenant: types_pb2.Tenant = await admin.CreateTenant(request, metadata=AUTH)
    return tenant.id


async def _generate(
    quota: quota_pb2_grpc.QuotaServiceStub, tenant_id: str, period: str, **flags: bool
) -> types_pb2.Invoice:
    request = quota_pb2.GenerateInvoiceRequest(tenant_id=tenant_id, period=period, **flags)
    invoice: types_pb2.Invoice = await quota.GenerateInvoice(request, timeout=10)
    return invoice


async def _backdate(runtime: Runtime, tenant_id: str) -> None:
    """Make the tenant a customer since the start of last month (set-up only; the API cannot)."""
    since = Period.parse(LAST_MONTH).start
    assert runtime.database is not None
    async with runtime.database.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE tenants SET created_at = :since, updated_at = :now, version = version + 1"
                " WHERE id = :t"
            ),
            {
                "since": since.replace(tzinfo=None),
                "now": datetime.now(UTC).replace(tzinfo=None),
                "t": tenant_id,
            },
        )
        await conn.execute(
            sa.text("UPDATE plan_changes SET effective_at = :since WHERE tenant_id = :t"),
            {"since": since.replace(tzinfo=None), "t": tenant_id},
        )


async def _generate_last_month(
    quota: quota_pb2_grpc.QuotaServiceStub, tenant_id: str, **flags: bool
) -> types_pb2.Invoice:
    """Last month's invoice, once the tenant directory has seen the back-dated tenant."""
    for _ in range(60):
        try:
            return await _generate(quota, tenant_id, LAST_MONTH, **flags)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        await asyncio.sleep(0.05)
    raise AssertionError("the back-dated tenant was never seen")


async def _list(admin: admin_pb2_grpc.AdminServiceStub, **fields: object) -> list[str]:
    request = admin_pb2.ListInvoicesRequest(**fields)  # type: ignore[arg-type]
    reply = await admin.ListInvoices(request, metadata=AUTH)
    return [invoice.id for invoice in reply.invoices]


async def _refused(call: object, request: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=AUTH, timeout=10)  # type: ignore[operator]
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


async def test_invoices_list_newest_period_first_with_filters(
    admin: admin_pb2_grpc.AdminServiceStub,
    quota: quota_pb2_grpc.QuotaServiceStub,
    runtime: Runtime,
) -> None:
    a, b = await _tenant(admin), await _tenant(admin)
    await _backdate(runtime, a)
    a_before = await _generate_last_month(quota, a)
    a_now = await _generate(quota, a, THIS_MONTH)
    b_now = await _generate(quota, b, THIS_MONTH)
    assert await _list(admin, tenant_id=a) == [a_now.id, a_before.id]
    assert await _list(admin, tenant_id=a, period=LAST_MONTH) == [a_before.id]
    assert set(await _list(admin, period=THIS_MONTH)) >= {a_now.id, b_now.id}


async def test_pages_walk_every_invoice_once(
    admin: admin_pb2_grpc.AdminServiceStub,
    quota: quota_pb2_grpc.QuotaServiceStub,
    runtime: Runtime,
) -> None:
    tenants = [await _tenant(admin) for _ in range(3)]
    await _backdate(runtime, tenants[0])
    made = [(await _generate_last_month(quota, tenants[0])).id]
    made += [(await _generate(quota, t, THIS_MONTH)).id for t in tenants]
    seen, token = [], ""
    while True:
        request = admin_pb2.ListInvoicesRequest(page_size=1, page_token=token)
        reply = await admin.ListInvoices(request, metadata=AUTH)
        seen += [i.id for i in reply.invoices]
        token = reply.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) and set(made) <= set(seen)


async def test_get_answers_the_generated_invoice(
    admin: admin_pb2_grpc.AdminServiceStub, quota: quota_pb2_grpc.QuotaServiceStub
) -> None:
    made = await _generate(quota, await _tenant(admin), THIS_MONTH)
    got = await admin.GetInvoice(admin_pb2.GetInvoiceRequest(invoice_id=made.id), metadata=AUTH)
    assert got == made


async def test_voiding_a_draft_lets_the_period_be_generated_again(
    admin: admin_pb2_grpc.AdminServiceStub, quota: quota_pb2_grpc.QuotaServiceStub
) -> None:
    tenant = await _tenant(admin)
    draft = await _generate(quota, tenant, THIS_MONTH)
    request = admin_pb2.VoidInvoiceRequest(invoice_id=draft.id, reason="wrong customer data")
    voided = await admin.VoidInvoice(request, metadata=AUTH)
    assert voided.status == VOID
    assert await admin.VoidInvoice(request, metadata=AUTH) == voided  # idempotent
    again = await _generate(quota, tenant, THIS_MONTH)
    assert (again.version, again.replaces_invoice_id, again.status) == (2, draft.id, DRAFT)


async def test_a_finalized_invoice_not_sent_to_stripe_can_be_voided(
    admin: admin_pb2_grpc.AdminServiceStub, quota: quota_pb2_grpc.QuotaServiceStub
) -> None:
    final = await _generate(quota, await _tenant(admin), THIS_MONTH, finalize=True, force=True)
    assert final.status == FINALIZED
    request = admin_pb2.VoidInvoiceRequest(invoice_id=final.id)
    assert (await admin.VoidInvoice(request, metadata=AUTH)).status == VOID


async def test_an_invoice_queued_for_stripe_is_not_voided_here(
    admin: admin_pb2_grpc.AdminServiceStub, quota: quota_pb2_grpc.QuotaServiceStub
) -> None:
    final = await _generate(
        quota, await _tenant(admin), THIS_MONTH, finalize=True, force=True, push_to_stripe=True
    )
    request = admin_pb2.VoidInvoiceRequest(invoice_id=final.id)
    details = await _refused(admin.VoidInvoice, request, grpc.StatusCode.FAILED_PRECONDITION)
    assert "Stripe" in details
    got = await admin.GetInvoice(admin_pb2.GetInvoiceRequest(invoice_id=final.id), metadata=AUTH)
    assert got.status == FINALIZED


async def test_a_paid_invoice_cannot_be_voided(
    admin: admin_pb2_grpc.AdminServiceStub,
    quota: quota_pb2_grpc.QuotaServiceStub,
    runtime: Runtime,
) -> None:
    final = await _generate(quota, await _tenant(admin), THIS_MONTH, finalize=True, force=True)
    assert runtime.database is not None
    async with runtime.database.begin() as conn:
        await conn.execute(
            sa.text("UPDATE invoices SET status = 'paid' WHERE id = :i"), {"i": final.id}
        )
    request = admin_pb2.VoidInvoiceRequest(invoice_id=final.id)
    details = await _refused(admin.VoidInvoice, request, grpc.StatusCode.FAILED_PRECONDITION)
    assert "paid" in details
    got = await admin.GetInvoice(admin_pb2.GetInvoiceRequest(invoice_id=final.id), metadata=AUTH)
    assert got.status == types_pb2.Invoice.PAID


@pytest.mark.parametrize(
    ("rpc", "fields", "code", "words"),
    [
        ("ListInvoices", {"period": "2026-13"}, grpc.StatusCode.INVALID_ARGUMENT, "period"),
        ("ListInvoices", {"page_size": 5000}, grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
        ("ListInvoices", {"page_token": "zzz"}, grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
        ("ListInvoices", {"tenant_id": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "UUID"),
        ("ListInvoices", {"tenant_id": str(uuid.uuid4())}, grpc.StatusCode.NOT_FOUND, "tenant"),
        ("GetInvoice", {"invoice_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "invoice_id"),
        ("GetInvoice", {"invoice_id": str(uuid.uuid4())}, grpc.StatusCode.NOT_FOUND, "invoice"),
        ("VoidInvoice", {"invoice_id": str(uuid.uuid4())}, grpc.StatusCode.NOT_FOUND, "invoice"),
        (
            "VoidInvoice",
            {"invoice_id": str(uuid.uuid4()), "reason": "r" * 501},
            grpc.StatusCode.INVALID_ARGUMENT,
            "at most 500",
        ),
    ],
)
async def test_bad_invoice_requests_are_refused(
    admin: admin_pb2_grpc.AdminServiceStub,
    rpc: str,
    fields: dict[str, object],
    code: grpc.StatusCode,
    words: str,
) -> None:
    request = getattr(admin_pb2, f"{rpc}Request")(**fields)
    assert words in await _refused(getattr(admin, rpc), request, code)
