"""Usage priced in Stripe reaches Stripe's meters exactly once, in batches, through faults.

Two ``quotaplane serve`` replicas on one Redis and one Postgres ledger, flushing every 200 ms,
reporting meter events every ``METER_INTERVAL`` to the Stripe emulator (the real ``stripe``
SDK). CheckQuota (metric ``requests``) and RecordUsage (metric ``rating.bulk``) load runs on
a plan whose two metrics are priced by Stripe meters, while the emulator answers some meter
event calls with 429 (``Retry-After``) and commits others but drops their responses, and one
replica is SIGKILLed and restarted.

At the end, per tenant and metric: the units clients were told were admitted or accepted =
the ledger = the emulator's meter event summary. And the number of meter event calls is about
tenants x metrics x seconds / interval, not one per request.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import stripe

from quotaplane.integrations.stripe.client import API_VERSION
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tables import usage_hourly
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane_client.v1 import quota_pb2
from tests.fakes import StripeEmulator
from tests.harness.replicas import Replicas, stripe_replicas
from tests.integration.billing_server import event

pytestmark = pytest.mark.timeout(300)

METER_INTERVAL = 2.0  # seconds; the default is 5 s, shorter keeps the test short
PLANS = """
plans:
  metered:
    metrics:
      requests: {stripe_meter: openclaw_requests, limits: {month: 100000000}}
      rating.bulk: {stripe_meter: openclaw_bulk}
"""
METERS = {"requests": "openclaw_requests", "rating.bulk": "openclaw_bulk"}
TENANTS = 3
EVENTS_PATH = "/v1/billing/meter_events"
Units = Counter[tuple[str, str]]  # (tenant, metric) -> units


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
        key_prefix=f"{redis_key_prefix}:m",
        database_url=database_url,
        emulator=emulator,
        env={"QUOTAPLANE_METER_INTERVAL": f"{METER_INTERVAL}s"},
    ) as replicas:
        yield replicas


def create_meters(emu: StripeEmulator) -> stripe.StripeClient:
    client = stripe.StripeClient(
        emu.api_key, base_addresses={"api": emu.api_base}, stripe_version=API_VERSION
    )
    for metric, name in METERS.items():
        params: Any = {
            "display_name": metric,
            "event_name": name,
            "default_aggregation": {"formula": "sum"},
        }
        client.v1.billing.meters.create(params=params)
    return client


async def checks(replicas: Replicas, tenants: list[str], told: Units, stop: asyncio.Event) -> int:
    calls = 0
    while not stop.is_set():
        tenant, cost = random.choice(tenants), random.randint(1, 5)
        request = quota_pb2.CheckQuotaRequest(
            tenant_id=tenant, metric="requests", cost=cost, request_id=uuid.uuid4().hex
        )
        reply = await replicas.call("CheckQuota", request, 2)
        calls += 1
        if reply.allowed:
            told[(tenant, "requests")] += cost
    return calls


async def records(replicas: Replicas, tenants: list[str], told: Units, stop: asyncio.Event) -> int:
    calls = 0
    while not stop.is_set():
        tenant = random.choice(tenants)
        events = [event(tenant, random.randint(1, 50), metric="rating.bulk") for _ in range(4)]
        reply = await replicas.call("RecordUsage", quota_pb2.RecordUsageRequest(events=events))
        assert reply.rejected == 0, reply
        told[(tenant, "rating.bulk")] += sum(e.quantity for e in events)
        calls += 1
        await asyncio.sleep(0.02)
    return calls


async def faults(replicas: Replicas, emu: StripeEmulator, seconds: float) -> None:
    """429s and dropped responses on the meter endpoint, and one replica SIGKILLed."""
    deadline = time.monotonic() + seconds
    killed = False
    while time.monotonic() < deadline:
        emu.fail_next(2, 429, path_prefix=EVENTS_PATH, retry_after=1)
        await asyncio.sleep(0.7)
        emu.drop_response_after_commit_next(2, path_prefix=EVENTS_PATH)
        await asyncio.sleep(0.7)
        if not killed and time.monotonic() > deadline - seconds / 2:
            await replicas.restart(0)  # SIGKILL, then start again
            killed = True


async def ledger_units(database_url: str) -> Units:
    engine = create_async_engine_for(database_url)
    query = sa.select(
        usage_hourly.c.tenant_id, usage_hourly.c.metric, sa.func.sum(usage_hourly.c.quantity)
    ).group_by(usage_hourly.c.tenant_id, usage_hourly.c.metric)
    try:
        async with engine.connect() as conn:
            return Counter({(r[0], r[1]): int(r[2]) for r in await conn.execute(query)})
    finally:
        await engine.dispose()


async def customers(database_url: str, tenants: list[str]) -> dict[str, str | None]:
    engine = create_async_engine_for(database_url)
    try:
        store = SqlTenantStore(engine)
        return {t: (await store.get(t)).stripe_customer_id for t in tenants}
    finally:
        await engine.dispose()


def stripe_units(client: stripe.StripeClient, customers: dict[str, str | None]) -> Units:
    meters = {m.event_name: m.id for m in client.v1.billing.meters.list().data}
    start = int(time.time()) // 86400 * 86400 - 2 * 86400
    found: Units = Counter()
    for tenant, customer in customers.items():
        for metric, name in METERS.items():
            if customer is None:
                continue
            params: Any = {"customer": customer, "start_time": start, "end_time": start + 4 * 86400}
            page = client.v1.billing.meters.event_summaries.list(meters[name], params=params)
            value = int(sum(s.aggregated_value for s in page.data))
            if value:
                found[(tenant, metric)] = value
    return found


async def make_tenants(database_url: str) -> list[str]:
    engine = create_async_engine_for(database_url)
    try:
        store = SqlTenantStore(engine)
        return [(await store.create(name=f"m{i}", plan="metered")).id for i in range(TENANTS)]
    finally:
        await engine.dispose()


async def test_meter_summaries_equal_the_ledger_through_429s_drops_and_a_sigkill(
    replicas: Replicas, database_url: str, emulator: StripeEmulator
) -> None:
    client = create_meters(emulator)
    tenants = await make_tenants(database_url)
    told: Units = Counter()
    stop = asyncio.Event()
    started = time.monotonic()
    load = [asyncio.create_task(checks(replicas, tenants, told, stop)) for _ in range(4)]
    load += [asyncio.create_task(records(replicas, tenants, told, stop)) for _ in range(2)]
    try:
        await faults(replicas, emulator, seconds=12)
    finally:
        stop.set()
        calls = sum(await asyncio.gather(*load))
    loaded = time.monotonic() - started

    found: Units = Counter()
    for _ in range(120):  # the flush, the next batches, retries after 429 and a lost lease
        ledger = await ledger_units(database_url)
        found = stripe_units(client, await customers(database_url, tenants))
        if ledger == told and found == told:
            break
        await asyncio.sleep(1)
    assert all(told[(t, m)] > 0 for t in tenants for m in METERS), "the load did not run"
    assert await ledger_units(database_url) == told
    assert found == told

    sent = [r for r in emulator.requests if r.path == EVENTS_PATH and not r.injected]
    dropped = sum(r.dropped for r in sent)
    settled = time.monotonic() - started
    # At most one batch per (tenant, metric) per interval while usage came in and settled,
    # plus one resend per response the emulator dropped (a 429 ran nothing: not counted).
    batches = TENANTS * len(METERS) * (settled / METER_INTERVAL + 1)
    assert len(sent) <= batches + dropped, (len(sent), batches, dropped, loaded, settled)
    assert calls > 10 * len(sent), (calls, len(sent))  # not one event per request
