"""Exactly once under faults: usage and invoices survive SIGKILLs and a Postgres outage.

Two ``quotaplane serve`` replicas on one Redis and a Postgres database of their own, flushing
every 200 ms and pushing to the Stripe emulator. While CheckQuota and RecordUsage load runs,
the replicas are SIGKILLed and restarted several times and the database disappears for a
while (renamed away, so every connection fails, then renamed back). Then every tenant's
period is finalized and pushed, and a replica is killed mid-push.

At the end the ledger holds exactly the admitted units plus the accepted events, and the
emulator holds exactly one finalized invoice per tenant whose total equals the ledger's.

Clients retry a failed call with the same ``request_id`` (CheckQuota) or the same event ids
(RecordUsage), as a real client must; a unit is counted once, when its call is answered.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tables import usage_hourly
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane_client.v1 import quota_pb2, types_pb2
from tests.fakes import StripeEmulator
from tests.harness.replicas import Replicas, stripe_replicas
from tests.integration.billing_server import event, this_period

pytestmark = pytest.mark.timeout(240)

PLANS = "plans:\n  big: {price_per_1000_requests: 0.04, monthly_quota: 100000000}\n"
TENANTS = 3


@dataclass
class Expected:
    units: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def database_url(fresh_postgres_database: Callable[[], str]) -> str:
    url = fresh_postgres_database()
    migrate.upgrade(url)
    return url


@pytest.fixture
async def replicas(
    tmp_path: Path,
    redis_url: str,
    redis_key_prefix: str,
    database_url: str,
    emulator: StripeEmulator,
) -> AsyncIterator[Replicas]:
    async with stripe_replicas(
        tmp_path,
        plans=PLANS,
        redis_url=redis_url,
        key_prefix=f"{redis_key_prefix}:x",
        database_url=database_url,
        emulator=emulator,
        env={"QUOTAPLANE_REDIS_TIMEOUT": "1s"},
    ) as replicas:
        yield replicas


async def _checks(
    replicas: Replicas, tenants: list[str], expected: Expected, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        tenant, cost = random.choice(tenants), random.randint(1, 5)
        request = quota_pb2.CheckQuotaRequest(
            tenant_id=tenant, cost=cost, request_id=uuid.uuid4().hex
        )
        reply = await replicas.call("CheckQuota", request, 2)
        if reply.allowed:
            expected.units[tenant] += cost


async def _records(
    replicas: Replicas, tenants: list[str], expected: Expected, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        tenant = random.choice(tenants)
        events = [event(tenant, random.randint(1, 100)) for _ in range(5)]
        request = quota_pb2.RecordUsageRequest(events=events)
        reply = await replicas.call("RecordUsage", request)
        assert reply.rejected == 0, reply
        expected.units[tenant] += sum(e.quantity for e in events)
        await asyncio.sleep(0.02)


def _rename_database(admin_url: str, old: str, new: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (old,)
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)
            )
        )


async def _chaos(replicas: Replicas, admin_url: str, database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    for round_ in range(4):
        await asyncio.sleep(random.uniform(0.4, 0.9))
        await replicas.restart(round_ % 2)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(_rename_database, admin_url, name, name + "_away")
    try:
        await asyncio.sleep(1.5)  # CheckQuota goes on; flushes and RecordUsage wait
    finally:
        await asyncio.to_thread(_rename_database, admin_url, name + "_away", name)
    await asyncio.sleep(0.5)


async def _ledger_units(database_url: str) -> Counter[str]:
    engine = create_async_engine_for(database_url)
    try:
        query = sa.select(usage_hourly.c.tenant_id, sa.func.sum(usage_hourly.c.quantity)).group_by(
            usage_hourly.c.tenant_id
        )
        async with engine.connect() as conn:
            return Counter({row[0]: int(row[1]) for row in await conn.execute(query)})
    finally:
        await engine.dispose()


async def _make_tenants(database_url: str) -> list[str]:
    engine = create_async_engine_for(database_url)
    try:
        store = SqlTenantStore(engine)
        return [(await store.create(name=f"t{i}", plan="big")).id for i in range(TENANTS)]
    finally:
        await engine.dispose()


async def test_usage_and_invoices_are_exactly_once_across_kills_and_an_outage(
    replicas: Replicas, database_url: str, postgres_admin_url: str, emulator: StripeEmulator
) -> None:
    tenants = await _make_tenants(database_url)
    expected, stop = Expected(), asyncio.Event()
    load = [asyncio.create_task(_checks(replicas, tenants, expected, stop)) for _ in range(6)]
    load += [asyncio.create_task(_records(replicas, tenants, expected, stop)) for _ in range(2)]
    try:
        await _chaos(replicas, postgres_admin_url, database_url)
    finally:
        stop.set()
        await asyncio.gather(*load)

    assert all(expected.units[tenant] > 0 for tenant in tenants), "the load did not run"
    invoices = await _finalize_and_push(replicas, tenants)
    await replicas.restart(0)  # mid-push: its worker may hold a lease for a few seconds

    assert await _ledger_units(database_url) == expected.units
    for tenant, invoice in zip(tenants, invoices, strict=True):
        assert [line.quantity for line in invoice.lines] == [expected.units[tenant]]
        assert invoice.total_minor == -(-expected.units[tenant] // 1000) * 4
    await _until_pushed(emulator, invoices)
    for invoice in invoices:
        remote = emulator.invoice(await _stripe_id(replicas, invoice))
        assert len(emulator.invoices_for(str(remote["customer"]))) == 1
        assert (remote["status"], remote["total"]) == ("open", invoice.total_minor)


async def _finalize_and_push(replicas: Replicas, tenants: list[str]) -> list[types_pb2.Invoice]:
    invoices = []
    for tenant in tenants:
        request = quota_pb2.GenerateInvoiceRequest(
            tenant_id=tenant, period=this_period(), finalize=True, force=True, push_to_stripe=True
        )
        invoices.append(await replicas.call("GenerateInvoice", request, 10))
    return invoices


async def _stripe_id(replicas: Replicas, invoice: types_pb2.Invoice) -> str:
    request = quota_pb2.GenerateInvoiceRequest(tenant_id=invoice.tenant_id, period=invoice.period)
    current = await replicas.call("GenerateInvoice", request, 10)
    return str(current.stripe_invoice_id)


async def _until_pushed(emulator: StripeEmulator, invoices: list[types_pb2.Invoice]) -> None:
    for _ in range(600):
        finalized = [
            inv
            for customer in emulator.customers
            for inv in emulator.invoices_for(str(customer["id"]))
            if inv["status"] == "open"
        ]
        if len(finalized) >= len(invoices):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the invoices did not reach Stripe within 60 s")
