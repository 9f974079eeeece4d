"""The Stripe worker against a slow or contended Stripe: the event loop stays free, and the
outbox lease fences what a worker records.

Real ledger (SQLite and Postgres), the real ``stripe`` SDK against the local emulator.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.billing.pricing import price_period
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.integrations.stripe.client import StripeGateway
from quotaplane.services.invoice_push import InvoicePusher
from quotaplane.storage.sql.invoices import SqlInvoiceLedger
from quotaplane.storage.sql.outbox import SqlPushOutbox
from quotaplane.storage.sql.tables import invoices, stripe_outbox
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane_client.v1 import quota_pb2, quota_pb2_grpc
from tests.fakes import StripeEmulator
from tests.integration.billing_server import sqlite_billing_server

pytestmark = pytest.mark.timeout(60)

PLANS = parse_plans(
    """
plans:
  pro:
    base_fee: "49.00"
    metrics:
      requests: {charge: {model: per_unit, unit_price: "0.001"}}
""",
    "test",
)
PERIOD = Period(2026, 10)


async def finalized_invoice(engine: AsyncEngine) -> str:
    """A finalized invoice with two non-zero lines, queued for Stripe."""
    store = SqlTenantStore(engine, clock=lambda: datetime(2026, 9, 1, tzinfo=UTC))
    tenant = await store.create(name="Acme", plan="pro")
    priced = price_period(PERIOD, PLANS.get("pro"), {"requests": 1234})
    ledger = SqlInvoiceLedger(engine)
    invoice = await ledger.save_invoice(tenant.id, priced, finalize_at=datetime.now(UTC))
    await ledger.enqueue_push(invoice.id)
    return invoice.id


async def outbox_row(engine: AsyncEngine, invoice_id: str) -> sa.RowMapping:
    query = sa.select(stripe_outbox).where(stripe_outbox.c.invoice_id == invoice_id)
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().one()


async def invoice_error(engine: AsyncEngine, invoice_id: str) -> str | None:
    query = sa.select(invoices.c.last_error).where(invoices.c.id == invoice_id)
    async with engine.connect() as conn:
        error: str | None = (await conn.execute(query)).scalar_one()
    return error


def gateway(emu: StripeEmulator) -> StripeGateway:
    return StripeGateway(emu.api_key, api_base=emu.api_base)


@pytest.mark.parametrize("status", [400, 500], ids=["permanent", "retryable"])
async def test_a_stale_workers_completion_changes_nothing(
    database: AsyncEngine,
    emulator: StripeEmulator,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    invoice_id = await finalized_invoice(database)
    now = [datetime.now(UTC)]
    outbox = SqlPushOutbox(database, clock=lambda: now[0])
    [stale_job] = await outbox.claim_due(limit=1, lease_seconds=10)
    now[0] += timedelta(seconds=11)  # the stale worker stalled past its lease ...
    peer = InvoicePusher(outbox, gateway(emulator), base_backoff=timedelta(0))
    assert await peer.run_once() == 1  # ... and a peer leased the row and pushed it
    assert (await outbox_row(database, invoice_id))["state"] == "done"

    emulator.fail_next(status=status)  # the stale worker now meets an error
    stale = InvoicePusher(outbox, gateway(emulator), base_backoff=timedelta(0))
    with caplog.at_level(logging.WARNING, logger="quotaplane.domain.invoice_push"):
        await stale.push(stale_job)

    row = await outbox_row(database, invoice_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("done", 0, None)
    assert await invoice_error(database, invoice_id) is None
    assert f"lease of outbox row {stale_job.outbox_id} was lost" in caplog.text


async def test_a_push_longer_than_the_lease_keeps_its_row(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    invoice_id = await finalized_invoice(database)
    lease = timedelta(seconds=1)  # renewed every 1/3 s: a loaded CI machine stalls for less
    pusher = InvoicePusher(SqlPushOutbox(database), gateway(emulator), lease=lease)
    hold = emulator.hold_next("/v1/customers")
    push = asyncio.ensure_future(pusher.run_once())
    try:
        assert await asyncio.to_thread(hold.entered.wait, 10)
        await asyncio.sleep(3 * lease.total_seconds())  # the push outlives its first lease
        other = SqlPushOutbox(database)
        assert await other.claim_due(limit=10, lease_seconds=10) == []
    finally:
        hold.release()
    assert await asyncio.wait_for(push, 20) == 1
    assert (await outbox_row(database, invoice_id))["state"] == "done"


async def test_a_stripe_error_on_a_later_page_is_retried_like_any_other(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    invoice_id = await finalized_invoice(database)
    emulator.cap_page_size(1)
    emulator.fail_next(status=500, path_prefix="/v1/invoiceitems", query_contains="starting_after")
    pusher = InvoicePusher(SqlPushOutbox(database), gateway(emulator))
    assert await pusher.run_once() == 1
    row = await outbox_row(database, invoice_id)
    assert (row["state"], row["attempts"]) == ("pending", 1)  # mapped: retryable, counted
    assert "500" in str(row["last_error"])


async def test_a_worker_paging_a_slow_stripe_leaves_check_quota_fast(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, emulator: StripeEmulator
) -> None:
    async with sqlite_billing_server(
        tmp_path, redis_url=redis_url, key_prefix=redis_key_prefix
    ) as server:
        assert server.runtime.database is not None
        tenant = await server.tenant("growth")
        await server.check(tenant, 1)  # seeds its month counter: steady state from here on
        invoice_id = await finalized_invoice(server.runtime.database)
        emulator.cap_page_size(1)  # two items: the worker has to follow has_more
        emulator.slow_down(2.0, path_prefix="/v1/invoiceitems", method="GET")
        pusher = InvoicePusher(SqlPushOutbox(server.runtime.database), gateway(emulator))
        push = asyncio.ensure_future(pusher.run_once())

        assert server.runtime.grpc is not None
        caller = ExternalCaller(server.runtime.grpc.port, server.runtime.tokens.service, tenant)
        # The caller, the emulator and the SDK share this process (and its GIL) with the
        # server, which they never do in production: switch threads often, so their time
        # slices do not show up as the server's latency.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        caller.start()
        try:
            assert await push == 1
        finally:
            latencies = await asyncio.to_thread(caller.stop)
            sys.setswitchinterval(switch_interval)
        assert (await outbox_row(server.runtime.database, invoice_id))["state"] == "done"
    pages = [r for r in emulator.requests if r.method == "GET" and r.path == "/v1/invoiceitems"]
    assert len(pages) >= 3  # one listing of the empty draft, two pages of its two items
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < 0.050, f"CheckQuota p99 {p99 * 1000:.0f} ms while the worker paged Stripe"


class ExternalCaller:
    """A client outside the server's event loop (its own thread, the sync gRPC API): it sends
    a CheckQuota every ``every`` seconds without waiting for the previous answer, as Envoy
    does, so while the server's loop is blocked every call sent meanwhile waits and counts."""

    def __init__(self, port: int, token: str, tenant: str, every: float = 0.02) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stub = quota_pb2_grpc.QuotaServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._request = quota_pb2.CheckQuotaRequest(tenant_id=tenant, cost=1)
        self._every = every
        self._stopped = threading.Event()
        self._latencies: list[float] = []
        self._calls: list[grpc.Future] = []
        self._thread = threading.Thread(target=self._run, name="external-caller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[float]:
        """Stop sending; the latency of every call sent (all of them answered)."""
        self._stopped.set()
        self._thread.join(timeout=10)
        for call in self._calls:
            call.result(timeout=10)
        self._channel.close()
        return self._latencies

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            sent = time.perf_counter()
            call = self._stub.CheckQuota.future(self._request, metadata=self._metadata, timeout=10)
            call.add_done_callback(lambda _, sent=sent: self._answered(sent))
            self._calls.append(call)

    def _answered(self, sent: float) -> None:
        self._latencies.append(time.perf_counter() - sent)
