"""Finalized invoices pushed to Stripe through the outbox, against the local Stripe emulator.

The real ``stripe`` SDK talks HTTP to ``tests/fakes/stripe_emulator.py``; the ledger is real
(SQLite and Postgres). Faults come from the emulator: responses dropped after Stripe committed,
429 with Retry-After, 5xx, permanent 400s; and two workers racing for one invoice.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.billing.invoicing import price_tenant_period
from quotaplane.domain.billing.late_usage import supplementary_invoice
from quotaplane.domain.billing.ports import HourlyUsage, PendingFlush, PlanChange, StoredInvoice
from quotaplane.domain.billing.pricing import PricedInvoice, price_period
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.integrations.stripe.client import StripeGateway
from quotaplane.services.invoice_push import InvoicePusher
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.invoice_queries import SqlInvoiceQueries
from quotaplane.storage.sql.invoices import SqlInvoiceLedger
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.outbox import SqlPushOutbox
from quotaplane.storage.sql.tables import invoices, stripe_outbox, tenants
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane_client.v1 import types_pb2
from tests.fakes import StripeEmulator, event_payload, sign_webhook
from tests.integration.billing_server import billing_server, this_period

pytestmark = pytest.mark.timeout(60)

PLANS = parse_plans(
    """
plans:
  growth: {price_per_1000_requests: 0.04, monthly_quota: 50000}
  pro:
    base_fee: "49.00"
    metrics:
      requests: {charge: {model: per_unit, unit_price: "0.001"}}
      rating.bulk: {charge: {model: per_unit, unit_price: "0.002"}}
  bulk:
    metrics:
      requests:
        charge:
          model: volume
          tiers: [{up_to: 1000, unit_price: "0.10"}, {up_to: null, unit_price: "0.01"}]
""",
    "test",
)
PERIOD = Period(2026, 10)
WEBHOOK_SECRET = "whsec_runtime_test"


@dataclass
class Billing:
    engine: AsyncEngine
    emu: StripeEmulator
    ledger: SqlInvoiceLedger

    def pusher(self) -> InvoicePusher:
        """A worker that retries at once (zero backoff) unless Retry-After says otherwise."""
        gateway = StripeGateway(self.emu.api_key, api_base=self.emu.api_base)
        return InvoicePusher(SqlPushOutbox(self.engine), gateway, base_backoff=timedelta(0))

    async def finalized(self, plan: str = "pro", usage: dict[str, int] | None = None) -> str:
        store = SqlTenantStore(self.engine, clock=lambda: datetime(2026, 9, 1, tzinfo=UTC))
        tenant = await store.create(name="Acme", plan=plan)
        priced = price_period(
            PERIOD, PLANS.get(plan), {"requests": 1234} if usage is None else usage
        )
        invoice = await self.ledger.save_invoice(tenant.id, priced, finalize_at=datetime.now(UTC))
        await self.ledger.enqueue_push(invoice.id)
        return invoice.id

    async def invoice(self, invoice_id: str) -> StoredInvoice:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(invoices).where(invoices.c.id == invoice_id)))
                .mappings()
                .one()
            )
        found = await self.ledger.open_invoice(row["tenant_id"], PERIOD)
        assert found is not None
        return found

    async def outbox_row(self, invoice_id: str) -> sa.RowMapping:
        query = sa.select(stripe_outbox).where(stripe_outbox.c.invoice_id == invoice_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).mappings().one()

    def remote(self, invoice: StoredInvoice) -> dict[str, object]:
        assert invoice.stripe_invoice_id is not None
        return self.emu.invoice(invoice.stripe_invoice_id)


@pytest.fixture
def billing(database: AsyncEngine, emulator: StripeEmulator) -> Billing:
    return Billing(database, emulator, SqlInvoiceLedger(database))


async def test_a_finalized_invoice_is_pushed_with_one_item_per_line(billing: Billing) -> None:
    invoice_id = await billing.finalized(usage={"requests": 1234, "rating.bulk": 10})
    assert await billing.pusher().run_once() == 1
    invoice = await billing.invoice(invoice_id)
    remote = billing.remote(invoice)
    assert remote["status"] == "open" and remote["total"] == invoice.total_minor == 4900 + 123 + 2
    items = billing.emu.invoice_items_for(str(remote["id"]))
    assert sorted(int(str(i["amount"])) for i in items) == [2, 123, 4900]
    assert (await billing.outbox_row(invoice_id))["state"] == "done"
    async with billing.engine.connect() as conn:
        customer = (
            await conn.execute(
                sa.select(tenants.c.stripe_customer_id).where(tenants.c.id == invoice.tenant_id)
            )
        ).scalar_one()
    assert customer == remote["customer"]


async def test_a_second_run_pushes_nothing_again(billing: Billing) -> None:
    await billing.finalized()
    pusher = billing.pusher()
    await pusher.run_once()
    before = len(billing.emu.requests)
    assert await pusher.run_once() == 0
    assert len(billing.emu.requests) == before


@pytest.mark.parametrize("path", ["/v1/customers", "/v1/invoices", "/v1/invoiceitems"])
async def test_a_response_lost_after_stripe_committed_creates_nothing_twice(
    billing: Billing, path: str
) -> None:
    invoice_id = await billing.finalized()
    billing.emu.drop_response_after_commit_next(path_prefix=path)
    pusher = billing.pusher()
    await pusher.run_once()  # fails on the lost response, retried at once (zero backoff)
    await pusher.run_once()
    invoice = await billing.invoice(invoice_id)
    remote = billing.remote(invoice)
    assert len(billing.emu.customers) == 1
    assert len(billing.emu.invoices_for(str(remote["customer"]))) == 1
    assert len(billing.emu.invoice_items_for(str(remote["id"]))) == 2
    assert remote["status"] == "open" and remote["total"] == invoice.total_minor


async def test_a_429_is_retried_after_its_retry_after(billing: Billing) -> None:
    invoice_id = await billing.finalized()
    billing.emu.fail_next(status=429, retry_after=30, path_prefix="/v1/customers")
    started = datetime.now(UTC)
    await billing.pusher().run_once()
    row = await billing.outbox_row(invoice_id)
    assert row["state"] == "pending" and row["attempts"] == 1
    assert row["next_attempt_at"] >= started + timedelta(seconds=29)
    assert "429" in str(row["last_error"])


async def test_server_errors_are_retried_until_the_push_succeeds(billing: Billing) -> None:
    invoice_id = await billing.finalized()
    billing.emu.fail_next(n=3, status=500)
    pusher = billing.pusher()
    for _ in range(4):
        await pusher.run_once()
    row = await billing.outbox_row(invoice_id)
    assert (row["state"], row["attempts"]) == ("done", 3)


async def test_a_permanent_error_fails_the_push_and_shows_on_the_invoice(billing: Billing) -> None:
    invoice_id = await billing.finalized()
    billing.emu.fail_next(status=400, path_prefix="/v1/invoices")
    await billing.pusher().run_once()
    assert (await billing.outbox_row(invoice_id))["state"] == "failed"
    assert "400" in str((await billing.invoice(invoice_id)).last_error)


async def test_two_workers_push_one_invoice_once(billing: Billing) -> None:
    invoice_id = await billing.finalized()
    handled = await asyncio.gather(billing.pusher().run_once(), billing.pusher().run_once())
    assert sorted(handled) == [0, 1]
    remote = billing.remote(await billing.invoice(invoice_id))
    assert len(billing.emu.invoices_for(str(remote["customer"]))) == 1


async def test_a_zero_invoice_is_finalized_without_items(billing: Billing) -> None:
    invoice_id = await billing.finalized(plan="growth", usage={})
    await billing.pusher().run_once()
    remote = billing.remote(await billing.invoice(invoice_id))
    assert remote["total"] == 0 and remote["status"] == "paid"
    assert billing.emu.invoice_items_for(str(remote["id"])) == []


async def test_generate_invoice_with_push_reaches_stripe_through_the_running_server(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, emulator: StripeEmulator
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    async with billing_server(
        tmp_path,
        redis_url=redis_url,
        key_prefix=redis_key_prefix,
        database_url=url,
        stripe_api_key=emulator.api_key,
        stripe_api_base=emulator.api_base,
        stripe_webhook_addr="127.0.0.1:0",
        stripe_webhook_secret=WEBHOOK_SECRET,
    ) as server:
        tenant = await server.tenant()
        assert (await server.check(tenant, 12_345)).allowed
        flags = {"finalize": True, "force": True, "push_to_stripe": True}
        invoice = await server.invoice(tenant, this_period(), **flags)
        for _ in range(100):
            pushed = await server.invoice(tenant, this_period())
            if (
                pushed.stripe_invoice_id
                and emulator.invoice(pushed.stripe_invoice_id)["status"] == "open"
            ):
                break
            await asyncio.sleep(0.05)
        remote = emulator.invoice(pushed.stripe_invoice_id)
        assert (invoice.total_minor, remote["total"], remote["status"]) == (52, 52, "open")
        assert server.runtime.webhook_port is not None
        body = event_payload("invoice.paid", remote)
        signature = sign_webhook(body, WEBHOOK_SECRET, int(time.time()))
        assert await _post(server.runtime.webhook_port, body, signature) == 200
        paid = await server.invoice(tenant, this_period())
        assert server.runtime.telemetry is not None
        # The pusher counts the push once its outbox row is done, a commit after the invoice
        # row shows the Stripe id: on a loaded machine the test can get here in between.
        for _ in range(100):
            metrics = server.runtime.telemetry.scrape()
            if 'quotaplane_stripe_pushes_total{outcome="ok"}' in metrics:
                break
            await asyncio.sleep(0.05)
    assert paid.status == types_pb2.Invoice.PAID
    assert 'quotaplane_stripe_pushes_total{outcome="ok"} 1.0' in metrics
    assert 'quotaplane_invoiced_minor_units_total{currency="USD"} 52.0' in metrics


async def _post(port: int, body: bytes, signature: str) -> int:
    def send() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/stripe/webhook", body, {"Stripe-Signature": signature})
            return conn.getresponse().status
        finally:
            conn.close()

    return await asyncio.to_thread(send)


@pytest.mark.parametrize(
    ("plan", "totals"),
    [
        ("pro", [4900 + 100, 23]),  # 1,234 x 0.001 = 1.23 in all, the base fee once
        ("bulk", [10000, -8766]),  # volume: 1,234 x 0.01 = 12.34 < 1,000 x 0.10: a credit
    ],
)
async def test_a_supplementary_invoice_is_pushed_as_an_invoice_of_its_own(
    billing: Billing, plan: str, totals: list[int]
) -> None:
    store = SqlTenantStore(billing.engine, clock=lambda: datetime(2026, 9, 1, tzinfo=UTC))
    tenant = await store.create(name="Late", plan=plan)
    usage = SqlUsageLedger(billing.engine)
    at = datetime(2026, 10, 5, 10, tzinfo=UTC)

    async def admitted(flush_id: str, units: int) -> None:
        hour = (HourlyUsage("requests", at, units),)
        flush = PendingFlush(f"{flush_id}-{tenant.id}", tenant.id, hour)  # ids are global
        assert await usage.apply_flush(flush)

    async def generate() -> StoredInvoice:
        def price(rows: Sequence[HourlyUsage], changes: Sequence[PlanChange]) -> PricedInvoice:
            return price_tenant_period(tenant, PERIOD, PLANS, rows, changes)

        return await billing.ledger.generate(
            tenant.id,
            PERIOD,
            price,
            finalize_at=datetime.now(UTC),
            supplement=supplementary_invoice,
        )

    await admitted("f1", 1000)
    first = await generate()
    await admitted("f2", 234)  # a straggler flushed after the period closed
    second = await generate()
    for invoice in (first, second):
        await billing.ledger.enqueue_push(invoice.id)
    assert await billing.pusher().run_once() == 2
    pushed = [await SqlInvoiceQueries(billing.engine).get(i.id) for i in (first, second)]
    remotes = [billing.remote(i) for i in pushed if i is not None]
    assert [r["total"] for r in remotes] == totals
    assert remotes[0]["customer"] == remotes[1]["customer"]
    assert remotes[1]["metadata"] == {
        "invoice_id": second.id,
        "tenant_id": tenant.id,
        "period": "2026-10",
        "supplements_invoice_id": first.id,
    }
