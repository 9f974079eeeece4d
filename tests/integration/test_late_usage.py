"""Late usage after a finalized invoice, through the gRPC API on a real Runtime (SQLite, Postgres).

Usage admitted by CheckQuota after a forced finalize reaches the ledger through the flush; it
must end on a supplementary invoice of the same period, so the ledger's units for the period
equal the units on its invoices, and the money equals one invoice for all the usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from quotaplane.domain.billing.pricing import BASE_FEE, price_period
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.storage.sql.tables import invoices, stripe_outbox
from quotaplane_client.v1 import admin_pb2, types_pb2
from tests.integration.billing_server import (
    PLANS,
    BillingServer,
    billing_server,
    long_ago,
    this_period,
)

pytestmark = pytest.mark.timeout(90)

FINAL = {"finalize": True, "force": True}


@pytest.fixture
async def server(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, ledger_url: str
) -> AsyncIterator[BillingServer]:
    async with billing_server(
        tmp_path, redis_url=redis_url, key_prefix=redis_key_prefix, database_url=ledger_url
    ) as running:
        yield running


def _units(*invoices: types_pb2.Invoice) -> int:
    return sum(line.quantity for i in invoices for line in i.lines if line.metric != BASE_FEE)


async def _admitted(server: BillingServer, tenant: str, units: int) -> None:
    assert (await server.check(tenant, units)).allowed


async def _open_invoices(server: BillingServer, tenant: str) -> list[dict[str, object]]:
    assert server.runtime.database is not None
    query = (
        sa.select(invoices.c.id, invoices.c.supplement, invoices.c.status)
        .where(invoices.c.tenant_id == tenant, invoices.c.status != "void")
        .order_by(invoices.c.supplement)
    )
    async with server.runtime.database.connect() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def test_late_usage_is_billed_on_a_supplementary_invoice(server: BillingServer) -> None:
    tenant = await server.tenant("growth")
    await _admitted(server, tenant, 5_000)
    first = await server.invoice(tenant, this_period(), **FINAL)
    await _admitted(server, tenant, 3_000)  # admitted after the finalize: late usage
    second = await server.invoice(tenant, this_period(), **FINAL)
    assert second.id != first.id
    assert (second.supplements_invoice_id, second.supplement) == (first.id, 1)
    assert second.status == types_pb2.Invoice.FINALIZED
    assert await server.ledger_units(tenant) == _units(first, second) == 8_000
    # 8 packages of 1,000 at 0.04 = 0.32 in all; 0.20 of it was on the first invoice.
    assert (first.total, second.total, second.total_minor) == ("0.20", "0.12", 12)


async def test_get_usage_and_list_invoices_show_late_units_until_billed(
    server: BillingServer,
) -> None:
    tenant = await server.tenant("growth")
    await _admitted(server, tenant, 100)
    first = await server.invoice(tenant, this_period(), **FINAL)
    await _admitted(server, tenant, 40)
    usage = await server.admin.GetUsage(admin_pb2.GetUsageRequest(tenant_id=tenant), timeout=10)
    assert (usage.total, usage.not_yet_billed) == (140, 40)
    listed = await server.admin.ListInvoices(
        admin_pb2.ListInvoicesRequest(tenant_id=tenant), timeout=10
    )
    assert [i.id for i in listed.invoices] == [first.id]
    assert [(u.period, u.metric, u.quantity) for u in listed.late_usage] == [
        (this_period(), "requests", 40)
    ]
    second = await server.invoice(tenant, this_period(), **FINAL)
    usage = await server.admin.GetUsage(admin_pb2.GetUsageRequest(tenant_id=tenant), timeout=10)
    assert (usage.total, usage.not_yet_billed) == (140, 0)
    listed = await server.admin.ListInvoices(
        admin_pb2.ListInvoicesRequest(tenant_id=tenant), timeout=10
    )
    assert {i.id: i.supplements_invoice_id for i in listed.invoices} == {
        first.id: "",
        second.id: first.id,
    }
    assert list(listed.late_usage) == []


async def test_incremental_pricing_across_a_tier_boundary_is_exact(
    server: BillingServer,
) -> None:
    # 49.00 base, 1,000 included, then 0.01 up to 1,000 billable and 0.001 after; a customer
    # since before the period, so nothing is prorated.
    tenant = await server.tenant("pro", created_at=long_ago())
    await _admitted(server, tenant, 1_500)
    first = await server.invoice(tenant, this_period(), **FINAL)
    await _admitted(server, tenant, 1_000)  # crosses the tier boundary at 1,000 billable
    second = await server.invoice(tenant, this_period(), **FINAL)
    plan = parse_plans(PLANS, "plans.yaml").get("pro")
    whole = price_period(Period.parse(this_period()), plan, {"requests": 2_500})
    assert (first.total, second.total) == ("54.00", "5.50")  # base fee charged once
    assert [line.metric for line in second.lines] == ["requests"]
    assert Decimal(first.total) + Decimal(second.total) == whole.total == Decimal("59.50")
    assert first.total_minor + second.total_minor == whole.total_minor


@pytest.mark.parametrize("flags", [FINAL, {}], ids=["finalized", "draft"])
async def test_concurrent_calls_create_one_supplementary_invoice(
    server: BillingServer, flags: dict[str, bool]
) -> None:
    tenant = await server.tenant("growth")
    await _admitted(server, tenant, 2_000)
    first = await server.invoice(tenant, this_period(), **FINAL)
    await _admitted(server, tenant, 1_000)
    replies = await asyncio.gather(
        *(server.invoice(tenant, this_period(), **flags) for _ in range(4))
    )
    assert {reply.id for reply in replies} == {replies[0].id}
    assert replies[0].supplements_invoice_id == first.id
    assert [row["supplement"] for row in await _open_invoices(server, tenant)] == [0, 1]
    assert await server.ledger_units(tenant) == _units(first, replies[0]) == 3_000


async def test_a_stale_call_after_finalize_creates_nothing(server: BillingServer) -> None:
    tenant = await server.tenant("growth")
    await _admitted(server, tenant, 2_000)
    first = await server.invoice(tenant, this_period(), **FINAL)
    again = await server.invoice(tenant, this_period(), **FINAL)
    draft_call = await server.invoice(tenant, this_period())
    assert again == first
    assert draft_call == first
    assert len(await _open_invoices(server, tenant)) == 1


async def test_each_supplementary_invoice_carries_only_what_was_not_billed(
    server: BillingServer,
) -> None:
    tenant = await server.tenant("growth")
    await _admitted(server, tenant, 1_000)
    first = await server.invoice(tenant, this_period(), **FINAL)
    await _admitted(server, tenant, 500)
    draft = await server.invoice(tenant, this_period())  # a draft supplement, regenerated
    await _admitted(server, tenant, 700)
    second = await server.invoice(tenant, this_period(), **FINAL)
    assert (draft.id, draft.status, _units(draft)) == (second.id, types_pb2.Invoice.DRAFT, 500)
    await _admitted(server, tenant, 1)
    third = await server.invoice(tenant, this_period(), **FINAL)
    assert (_units(second), _units(third)) == (1_200, 1)
    assert (third.supplement, third.supplements_invoice_id) == (2, first.id)
    assert await server.ledger_units(tenant) == _units(first, second, third)
    # Started packages of 1,000 at 0.04: 1 for the first 1,000, 3 for 2,200 and for 2,201.
    assert [i.total for i in (first, second, third)] == ["0.04", "0.08", "0.00"]


async def test_a_supplementary_invoice_is_queued_for_stripe_under_its_own_id(
    server: BillingServer,
) -> None:
    tenant = await server.tenant("growth")
    await _admitted(server, tenant, 10)
    first = await server.invoice(tenant, this_period(), push_to_stripe=True, **FINAL)
    await _admitted(server, tenant, 10)
    second = await server.invoice(tenant, this_period(), push_to_stripe=True, **FINAL)
    assert server.runtime.database is not None
    query = sa.select(stripe_outbox.c.invoice_id, stripe_outbox.c.idempotency_base)
    async with server.runtime.database.connect() as conn:
        rows = {row.invoice_id: row.idempotency_base for row in await conn.execute(query)}
    assert rows[first.id] == f"qp-invoice-{first.id}"
    assert rows[second.id] == f"qp-invoice-{second.id}"


async def test_an_invoice_with_supplementary_invoices_is_not_voided_before_them(
    server: BillingServer,
) -> None:
    tenant = await server.tenant("growth")
    await _admitted(server, tenant, 10)
    first = await server.invoice(tenant, this_period(), **FINAL)
    await _admitted(server, tenant, 10)
    second = await server.invoice(tenant, this_period(), **FINAL)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.admin.VoidInvoice(admin_pb2.VoidInvoiceRequest(invoice_id=first.id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert second.id in (refused.value.details() or "")
    await server.admin.VoidInvoice(admin_pb2.VoidInvoiceRequest(invoice_id=second.id))
    voided = await server.admin.VoidInvoice(admin_pb2.VoidInvoiceRequest(invoice_id=first.id))
    assert voided.status == types_pb2.Invoice.VOID
