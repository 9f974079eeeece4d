"""Stripe webhooks over real HTTP into a real ledger (SQLite and Postgres).

Deliveries are signed the way Stripe signs them (``tests/fakes`` helpers); ``invoice.paid``
marks the pushed invoice paid once, a repeated delivery changes nothing, a bad signature is
refused with 400 and stores nothing.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.billing.payments import PaymentWebhooks
from quotaplane.domain.billing.pricing import price_period
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.integrations.stripe.client import webhook_verifier
from quotaplane.integrations.stripe.webhooks import PATH, WebhookServer, start_webhook_server
from quotaplane.storage.sql.invoices import SqlInvoiceLedger
from quotaplane.storage.sql.outbox import SqlPushOutbox
from quotaplane.storage.sql.tables import invoices, stripe_webhook_events
from quotaplane.storage.sql.tenants import SqlTenantStore
from tests.fakes import event_payload, sign_webhook

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_test_quotaplane"
PLANS = parse_plans("plans:\n  growth: {price_per_1000_requests: 0.04, monthly_quota: 9}\n", "t")


@dataclass
class Endpoint:
    server: WebhookServer
    engine: AsyncEngine

    async def post(self, body: bytes, signature: str, path: str = PATH) -> int:
        def send() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
            try:
                conn.request("POST", path, body, {"Stripe-Signature": signature})
                return conn.getresponse().status
            finally:
                conn.close()

        return await asyncio.to_thread(send)

    async def pushed_invoice(self, remote_id: str) -> str:
        store = SqlTenantStore(self.engine)
        tenant = await store.create(name="Acme", plan="growth")
        ledger = SqlInvoiceLedger(self.engine)
        priced = price_period(Period(2026, 10), PLANS.get("growth"), {"requests": 5})
        invoice = await ledger.save_invoice(tenant.id, priced, finalize_at=datetime.now(UTC))
        await SqlPushOutbox(self.engine).set_remote_invoice(invoice.id, remote_id)
        return invoice.id

    async def status(self, invoice_id: str) -> str:
        query = sa.select(invoices.c.status).where(invoices.c.id == invoice_id)
        async with self.engine.connect() as conn:
            return str((await conn.execute(query)).scalar_one())


@pytest.fixture
async def endpoint(database: AsyncEngine) -> AsyncIterator[Endpoint]:
    hooks = PaymentWebhooks(SqlPushOutbox(database), webhook_verifier(SECRET))
    server = await start_webhook_server("127.0.0.1:0", hooks.receive)
    try:
        yield Endpoint(server, database)
    finally:
        await server.close()


def _paid(remote_id: str, event_id: str) -> tuple[bytes, str]:
    body = event_payload("invoice.paid", {"id": remote_id, "object": "invoice"}, event_id=event_id)
    return body, sign_webhook(body, SECRET, int(time.time()))


async def test_invoice_paid_marks_the_invoice_paid(endpoint: Endpoint) -> None:
    invoice_id = await endpoint.pushed_invoice("in_paid1")
    assert await endpoint.post(*_paid("in_paid1", "evt_1")) == 200
    assert await endpoint.status(invoice_id) == "paid"


async def test_a_repeated_delivery_is_answered_and_applied_once(endpoint: Endpoint) -> None:
    await endpoint.pushed_invoice("in_paid2")
    body, signature = _paid("in_paid2", "evt_2")
    assert [await endpoint.post(body, signature) for _ in range(3)] == [200, 200, 200]
    query = sa.select(sa.func.count()).select_from(stripe_webhook_events)
    async with endpoint.engine.connect() as conn:
        assert (
            await conn.execute(query.where(stripe_webhook_events.c.event_id == "evt_2"))
        ).scalar_one() == 1


async def test_a_bad_signature_is_refused_and_changes_nothing(endpoint: Endpoint) -> None:
    invoice_id = await endpoint.pushed_invoice("in_paid3")
    body, _ = _paid("in_paid3", "evt_3")
    forged = sign_webhook(body, "whsec_someone_else", int(time.time()))
    assert await endpoint.post(body, forged) == 400
    assert await endpoint.post(body, "") == 400
    assert await endpoint.status(invoice_id) == "finalized"


async def test_other_paths_are_not_found(endpoint: Endpoint) -> None:
    assert await endpoint.post(*_paid("in_x", "evt_4"), path="/other") == 404
