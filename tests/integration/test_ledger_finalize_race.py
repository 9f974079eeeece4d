"""A RecordUsage event racing the finalize of its period: on the invoice, or refused; never lost.

The finalize runs ``InvoiceLedger.generate`` with a pricing step that stalls for a moment;
meanwhile another thread (its own event loop and engine, as another replica would have)
records an event of the same tenant and period. The event must wait for the finalize and then
be refused as late; the ledger's usage must equal the finalized invoice's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.billing.events import UsageEvent
from quotaplane.domain.billing.invoicing import price_tenant_period
from quotaplane.domain.billing.ports import HourlyUsage, PlanChange, Recorded
from quotaplane.domain.billing.pricing import PricedInvoice
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.invoices import SqlInvoiceLedger
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)

PLANS = parse_plans("plans:\n  growth: {price_per_1000_requests: 0.04, monthly_quota: 9}\n", "t")
PERIOD = Period(2026, 10)
AT = datetime(2026, 10, 20, 12, tzinfo=UTC)


def _record_in_another_replica(url: str, event: UsageEvent, results: list[Recorded]) -> None:
    async def record() -> None:
        engine = create_async_engine_for(url)
        try:
            results.extend(await SqlUsageLedger(engine).record_events([event]))
        finally:
            await engine.dispose()

    asyncio.run(record())


async def test_an_event_racing_the_finalize_is_refused_not_lost(database: AsyncEngine) -> None:
    store = SqlTenantStore(database, clock=lambda: datetime(2026, 9, 1, tzinfo=UTC))
    tenant = await store.create(name="race", plan="growth")
    usage = SqlUsageLedger(database)
    assert await usage.record_events([UsageEvent("early", tenant.id, "requests", 1500, AT)]) == [
        Recorded.STORED
    ]
    url = database.url.render_as_string(hide_password=False)
    late = UsageEvent("late", tenant.id, "requests", 1000, AT + timedelta(hours=1))
    results: list[Recorded] = []
    racer = threading.Thread(target=_record_in_another_replica, args=(url, late, results))

    def slow_price(rows: Sequence[HourlyUsage], changes: Sequence[PlanChange]) -> PricedInvoice:
        racer.start()  # the other replica records while this transaction is open
        time.sleep(0.5)
        return price_tenant_period(tenant, PERIOD, PLANS, rows, changes)

    invoice = await SqlInvoiceLedger(database).generate(
        tenant.id, PERIOD, slow_price, finalize_at=datetime.now(UTC)
    )
    await asyncio.to_thread(racer.join, 30)
    assert results == [Recorded.CLOSED]
    rows = await usage.usage(tenant.id, PERIOD.start, PERIOD.end)
    assert sum(row.quantity for row in rows) == invoice.lines[0].quantity == 1500
