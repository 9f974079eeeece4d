"""GenerateInvoice over real gRPC on a real Runtime (Redis + SQLite / Postgres).

The seed's numbers come out of the ledger to the cent; usage still in Redis is flushed first
(the background flush is set to an hour, so only that path can bring it); one invoice per
(tenant, period) however many concurrent calls; a finalized invoice never changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from quotaplane.storage.sql.tables import invoices, stripe_outbox
from quotaplane_client.v1 import types_pb2
from tests.integration.billing_server import (
    BillingServer,
    billing_server,
    event,
    last_period_instant,
    long_ago,
    this_period,
)

pytestmark = pytest.mark.timeout(60)

DRAFT = types_pb2.Invoice.DRAFT
FINALIZED = types_pb2.Invoice.FINALIZED


@pytest.fixture
async def server(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, ledger_url: str
) -> AsyncIterator[BillingServer]:
    async with billing_server(
        tmp_path, redis_url=redis_url, key_prefix=redis_key_prefix, database_url=ledger_url
    ) as running:
        yield running


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


@pytest.mark.parametrize(
    ("plan", "requests", "total", "minor"),
    [("growth", 12_345, "0.52", 52), ("starter", 10_000, "0.50", 50), ("growth", 0, "0.00", 0)],
)
async def test_the_seed_numbers_through_checkquota_and_the_flush(
    server: BillingServer, plan: str, requests: int, total: str, minor: int
) -> None:
    tenant = await server.tenant(plan)
    if requests:
        assert (await server.check(tenant, requests)).allowed  # waits in Redis
    invoice = await server.invoice(tenant, this_period())
    assert (invoice.total, invoice.total_minor, invoice.subtotal) == (total, minor, total)
    assert invoice.status == DRAFT and invoice.currency == "USD" and invoice.version == 1
    assert [line.quantity for line in invoice.lines] == [requests]


async def test_a_draft_is_regenerated_in_place(server: BillingServer) -> None:
    tenant = await server.tenant()
    await server.record(event(tenant, 1000))
    first = await server.invoice(tenant, this_period())
    await server.record(event(tenant, 1000))
    second = await server.invoice(tenant, this_period())
    assert second.id == first.id
    assert (first.total, second.total) == ("0.04", "0.08")


async def test_concurrent_generations_yield_one_invoice(server: BillingServer) -> None:
    tenant = await server.tenant()
    await server.record(event(tenant, 12_345))
    invoices = await asyncio.gather(*(server.invoice(tenant, this_period()) for _ in range(4)))
    assert len({invoice.id for invoice in invoices}) == 1
    assert {invoice.total for invoice in invoices} == {"0.52"}


async def test_finalizing_an_open_period_needs_force(server: BillingServer) -> None:
    tenant = await server.tenant()
    code = await _code(server.invoice(tenant, this_period(), finalize=True))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    forced = await server.invoice(tenant, this_period(), finalize=True, force=True)
    assert forced.status == FINALIZED and forced.HasField("finalized_at")


async def test_a_finalized_invoice_never_changes(server: BillingServer) -> None:
    tenant = await server.tenant(created_at=long_ago())
    last = last_period_instant()
    period = last.strftime("%Y-%m")
    await server.record(event(tenant, 1500, at=last))
    final = await server.invoice(tenant, period, finalize=True)  # the period has ended
    assert final.status == FINALIZED and final.total == "0.08"
    await server.record(event(tenant, 5000, at=last))  # refused: the period is closed
    again = await server.invoice(tenant, period)
    assert again == final


async def test_a_tenant_created_mid_period_pays_a_prorated_base_fee(
    server: BillingServer,
) -> None:
    tenant = await server.tenant("pro")  # base fee 49.00, created now
    await server.record(event(tenant, 1500))  # 1,000 included, 500 in the 0.01 tier
    invoice = await server.invoice(tenant, this_period())
    fee, usage = invoice.lines
    assert fee.metric == "base_fee" and fee.proration != "1"
    assert 0 < int(fee.amount_minor) < 4900
    assert usage.included <= 1000 and usage.tiers
    assert invoice.total_minor == fee.amount_minor + usage.amount_minor


async def test_pushing_a_draft_is_refused_and_a_final_invoice_is_queued_once(
    server: BillingServer,
) -> None:
    tenant = await server.tenant()
    code = await _code(server.invoice(tenant, this_period(), push_to_stripe=True))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    flags = {"finalize": True, "force": True, "push_to_stripe": True}
    first = await server.invoice(tenant, this_period(), **flags)
    await server.invoice(tenant, this_period(), **flags)
    assert server.runtime.database is not None
    async with server.runtime.database.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(stripe_outbox).where(stripe_outbox.c.invoice_id == first.id)
            )
        ).all()
    assert len(rows) == 1


@pytest.mark.parametrize(
    ("tenant_id", "period", "code"),
    [
        ("", "2026-01", grpc.StatusCode.INVALID_ARGUMENT),
        ("00000000-0000-4000-8000-000000000000", "", grpc.StatusCode.INVALID_ARGUMENT),
        ("00000000-0000-4000-8000-000000000000", "2026-13", grpc.StatusCode.INVALID_ARGUMENT),
        ("00000000-0000-4000-8000-000000000000", "9000-01", grpc.StatusCode.INVALID_ARGUMENT),
        ("00000000-0000-4000-8000-000000000000", "2026-01", grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_bad_requests_are_refused(
    server: BillingServer, tenant_id: str, period: str, code: grpc.StatusCode
) -> None:
    assert await _code(server.invoice(tenant_id, period)) == code


async def test_a_period_before_the_tenant_existed_has_no_invoice(server: BillingServer) -> None:
    tenant = await server.tenant()
    period = last_period_instant().strftime("%Y-%m")
    assert await _code(server.invoice(tenant, period)) == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_voided_invoice_is_regenerated_as_a_new_version(server: BillingServer) -> None:
    tenant = await server.tenant()
    first = await server.invoice(tenant, this_period())
    assert server.runtime.database is not None
    async with server.runtime.database.begin() as conn:
        await conn.execute(
            sa.update(invoices).where(invoices.c.id == first.id).values(status="void")
        )
    second = await server.invoice(tenant, this_period())
    assert second.id != first.id
    assert (second.version, second.replaces_invoice_id) == (2, first.id)
