"""The meter reporter on a real ledger (SQLite and Postgres) against the Stripe emulator,
through the real ``stripe`` SDK: what the flusher books reaches Stripe's meter summaries
exactly once, in one event per (tenant, metric) batch, through 429s, dropped responses and
concurrent replicas; usage past Stripe's 35-day window is an error that stays visible."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import stripe
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.billing.ports import HourlyUsage, PendingFlush
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.integrations.stripe.client import API_VERSION, StripeGateway
from quotaplane.services.meter_reporter import MeterReporter
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.meters import SqlMeterOutbox
from quotaplane.storage.sql.tables import meter_outbox
from quotaplane.storage.sql.tenants import SqlTenantStore
from tests.fakes import StripeEmulator

pytestmark = pytest.mark.timeout(60)

PLANS = parse_plans(
    """
plans:
  metered:
    metrics:
      requests: {stripe_meter: openclaw_requests, limits: {month: 1000000}}
      rating.bulk: {stripe_meter: openclaw_bulk}
  priced:
    metrics:
      requests: {charge: {model: per_unit, unit_price: "0.001"}}
""",
    "test",
)
METERS = {"requests": "openclaw_requests", "rating.bulk": "openclaw_bulk"}
_flush_ids = itertools.count()


class Clock:
    """Stands still unless a test moves it (a loaded machine must not move it for us)."""

    def __init__(self) -> None:
        self.start = datetime.now(UTC)
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self.start + self.offset


def this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


async def book(
    engine: AsyncEngine, tenant_id: str, metric: str, units: int, hour: datetime
) -> None:
    flush = PendingFlush(f"f-{next(_flush_ids)}-{time.time_ns()}", tenant_id, ())
    flush = PendingFlush(flush.flush_id, tenant_id, (HourlyUsage(metric, hour, units),))
    assert await SqlUsageLedger(engine).apply_flush(flush)


def stripe_client(emu: StripeEmulator) -> stripe.StripeClient:
    return stripe.StripeClient(
        emu.api_key, base_addresses={"api": emu.api_base}, stripe_version=API_VERSION
    )


def create_meters(emu: StripeEmulator) -> dict[str, str]:
    client = stripe_client(emu)
    ids = {}
    for metric, event in METERS.items():
        params: Any = {
            "display_name": metric,
            "event_name": event,
            "default_aggregation": {"formula": "sum"},
        }
        ids[metric] = str(client.v1.billing.meters.create(params=params).id)
    return ids


async def stripe_total(emu: StripeEmulator, engine: AsyncEngine, tenant_id: str, meter: str) -> int:
    store = SqlTenantStore(engine)
    customer = (await store.get(tenant_id)).stripe_customer_id
    assert customer is not None
    start = int(time.time()) // 86400 * 86400 - 40 * 86400
    params: Any = {"customer": customer, "start_time": start, "end_time": start + 42 * 86400}
    page = stripe_client(emu).v1.billing.meters.event_summaries.list(meter, params=params)
    return int(sum(s.aggregated_value for s in page.data))


def reporter(
    emu: StripeEmulator, engine: AsyncEngine, clock: Clock, outcomes: list[str] | None = None
) -> MeterReporter:
    record = outcomes.append if outcomes is not None else None
    return MeterReporter(
        SqlMeterOutbox(engine, clock=clock),
        StripeGateway(emu.api_key, api_base=emu.api_base),
        lambda: PLANS,
        clock=clock,
        on_outcome=record,
    )


async def tenant(engine: AsyncEngine, name: str, plan: str = "metered") -> str:
    return (await SqlTenantStore(engine).create(name=name, plan=plan)).id


async def outbox_rows(engine: AsyncEngine, *tenant_ids: str) -> list[sa.RowMapping]:
    """The tenants' meter outbox rows (a Postgres database is shared by a module's tests)."""
    query = sa.select(meter_outbox).where(meter_outbox.c.tenant_id.in_(tenant_ids))
    async with engine.connect() as conn:
        return list((await conn.execute(query)).mappings().all())


async def test_booked_usage_reaches_the_meters_once_per_tenant_and_metric_batch(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    meters, clock, hour = create_meters(emulator), Clock(), this_hour()
    a, b = await tenant(database, "A"), await tenant(database, "B")
    priced = await tenant(database, "P", plan="priced")
    for units in (3, 4, 5):  # three flushes in one interval: one event
        await book(database, a, "requests", units, hour)
    await book(database, a, "rating.bulk", 7, hour)
    await book(database, b, "requests", 11, hour)
    await book(database, priced, "requests", 99, hour)
    assert await reporter(emulator, database, clock).tick() == 3
    await book(database, a, "requests", 10, hour)
    assert await reporter(emulator, database, clock).tick() == 0  # within the interval
    clock.offset += timedelta(seconds=5)
    assert await reporter(emulator, database, clock).tick() == 1
    assert await reporter(emulator, database, clock).tick() == 0  # nothing new: nothing sent
    assert await stripe_total(emulator, database, a, meters["requests"]) == 22
    assert await stripe_total(emulator, database, a, meters["rating.bulk"]) == 7
    assert await stripe_total(emulator, database, b, meters["requests"]) == 11
    rows = await outbox_rows(database, a, b, priced)
    assert {r["tenant_id"] for r in rows} == {a, b}  # not the priced one
    assert len(emulator.meter_events) == 4
    assert all(r["state"] == "done" for r in await outbox_rows(database, a, b))


async def test_429_and_dropped_responses_are_retried_and_counted_once(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    meters, clock, hour, outcomes = create_meters(emulator), Clock(), this_hour(), []
    a = await tenant(database, "A")
    await book(database, a, "requests", 5, hour)
    await book(database, a, "rating.bulk", 6, hour)
    emulator.fail_next(1, 429, path_prefix="/v1/billing/meter_events", retry_after=30)
    emulator.drop_response_after_commit_next(1, path_prefix="/v1/billing/meter_events")
    meter_reporter = reporter(emulator, database, clock, outcomes)
    assert await meter_reporter.tick() == 0
    assert outcomes == ["rate_limited"]  # the round stops at a 429
    rows = await outbox_rows(database, a)
    assert all(r["next_attempt_at"] >= clock() + timedelta(seconds=25) for r in rows)
    assert await meter_reporter.tick() == 0  # Retry-After is honoured
    clock.offset += timedelta(seconds=31)
    await meter_reporter.tick()  # one send is committed by Stripe, its response dropped
    assert "retried" in outcomes
    clock.offset += timedelta(minutes=10)
    await meter_reporter.tick()  # its retry: Stripe has the identifier -> done, not twice
    assert await stripe_total(emulator, database, a, meters["requests"]) == 5
    assert await stripe_total(emulator, database, a, meters["rating.bulk"]) == 6
    assert all(r["state"] == "done" for r in await outbox_rows(database, a))
    assert len(emulator.meter_events) == 2


async def test_concurrent_replicas_queue_and_send_each_increment_once(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    meters, clock, hour = create_meters(emulator), Clock(), this_hour()
    tenants = [await tenant(database, f"T{i}") for i in range(4)]
    replicas = [reporter(emulator, database, clock) for _ in range(3)]
    for round_ in range(3):
        for t in tenants:
            await book(database, t, "requests", round_ + 1, hour)
        await asyncio.gather(*(r.tick() for r in replicas))
        clock.offset += timedelta(seconds=5)
    await replicas[0].tick()
    for t in tenants:
        assert await stripe_total(emulator, database, t, meters["requests"]) == 6
    rows = await outbox_rows(database, *tenants)
    assert len({r["identifier"] for r in rows}) == len(rows) == 12  # one per tenant and round
    assert sum(r["quantity"] for r in rows) == 24


async def test_usage_older_than_stripes_window_is_an_error_not_a_silent_drop(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    create_meters(emulator)
    clock, outcomes = Clock(), []
    a = await tenant(database, "A")
    await book(database, a, "requests", 8, this_hour() - timedelta(days=36))
    await reporter(emulator, database, clock, outcomes).tick()
    assert outcomes == ["too_old"]
    (row,) = await outbox_rows(database, a)
    assert (row["state"], row["quantity"]) == ("failed", 8)
    assert "35-day" in row["last_error"]
    assert emulator.meter_events == []


async def test_a_retry_past_stripes_dedup_window_is_failed_not_resent(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    create_meters(emulator)
    clock, outcomes = Clock(), []
    a = await tenant(database, "A")
    await book(database, a, "requests", 4, this_hour())
    emulator.drop_response_after_commit_next(1, path_prefix="/v1/billing/meter_events")
    meter_reporter = reporter(emulator, database, clock, outcomes)
    await meter_reporter.tick()  # Stripe has it; we do not know
    clock.offset += timedelta(hours=23, minutes=5)  # e.g. Stripe unreachable since
    await meter_reporter.tick()
    assert outcomes == ["retried", "expired"]
    (row,) = await outbox_rows(database, a)
    assert row["state"] == "failed" and "reconcile" in row["last_error"]
    assert len(emulator.meter_events) == 1


async def test_sent_events_are_pruned_after_the_retention_and_never_resent(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    meters, clock = create_meters(emulator), Clock()
    a = await tenant(database, "A")
    await book(database, a, "requests", 4, this_hour())
    await reporter(emulator, database, clock).tick()
    assert len(await outbox_rows(database, a)) == 1
    clock.offset += timedelta(days=3, minutes=1)
    assert await reporter(emulator, database, clock).tick() == 0
    assert await outbox_rows(database, a) == []
    assert await stripe_total(emulator, database, a, meters["requests"]) == 4


async def test_usage_booked_late_into_an_older_hour_is_reported_by_the_next_sweep(
    database: AsyncEngine, emulator: StripeEmulator
) -> None:
    meters, clock = create_meters(emulator), Clock()
    a = await tenant(database, "A")
    meter_reporter = reporter(emulator, database, clock)
    await book(database, a, "requests", 1, this_hour())
    await meter_reporter.tick()  # the first tick sweeps every hour
    await book(database, a, "requests", 6, this_hour() - timedelta(hours=5))
    clock.offset += timedelta(seconds=5)
    assert await meter_reporter.tick() == 0  # an interval looks at the recent hours only
    clock.offset += timedelta(minutes=10)
    assert await meter_reporter.tick() == 1
    assert await stripe_total(emulator, database, a, meters["requests"]) == 7
