"""The outbox push against Stripe's real test mode: runs only with a test key.

Set ``STRIPE_API_KEY=sk_test_...`` to run it; it creates a customer and one small invoice in
the test account, checks Stripe's total against the ledger's, then voids the invoice.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import stripe

from quotaplane.domain.billing.pricing import price_period
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.integrations.stripe.client import API_VERSION, StripeGateway
from quotaplane.services.invoice_push import InvoicePusher
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.invoices import SqlInvoiceLedger
from quotaplane.storage.sql.outbox import SqlPushOutbox
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(120)

PLANS = parse_plans(
    "plans:\n  growth: {price_per_1000_requests: 0.04, monthly_quota: 50000}\n", "t"
)


@pytest.fixture
def test_key() -> str:
    key = os.environ.get("STRIPE_API_KEY", "")
    if not key.startswith("sk_test_"):
        pytest.skip("STRIPE_API_KEY does not hold a Stripe test-mode key (sk_test_...)")
    return key


async def test_a_finalized_invoice_reaches_stripe_test_mode(test_key: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_async_engine_for(url)
    try:
        tenant = await SqlTenantStore(engine).create(name="quotaplane live test", plan="growth")
        priced = price_period(Period(2026, 10), PLANS.get("growth"), {"requests": 12_345})
        ledger = SqlInvoiceLedger(engine)
        invoice = await ledger.save_invoice(tenant.id, priced, finalize_at=datetime.now(UTC))
        await ledger.enqueue_push(invoice.id)
        assert await InvoicePusher(SqlPushOutbox(engine), StripeGateway(test_key)).run_once() == 1
        pushed = await ledger.open_invoice(tenant.id, Period(2026, 10))
    finally:
        await engine.dispose()
    assert pushed is not None and pushed.stripe_invoice_id and not pushed.last_error
    client = stripe.StripeClient(test_key, stripe_version=API_VERSION)
    remote = client.v1.invoices.retrieve(pushed.stripe_invoice_id)
    try:
        assert (remote.status, remote.total) == ("open", 52)
    finally:
        client.v1.invoices.void_invoice(pushed.stripe_invoice_id)
