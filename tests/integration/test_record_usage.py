"""RecordUsage over real gRPC on a real Runtime (Redis + SQLite / Postgres).

Each event is judged on its own; accepted events reach the ledger once, whatever the number of
retries; they count against the monthly quota; CheckQuota usage reaches the ledger through the
background flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from quotaplane_client.v1 import quota_pb2
from tests.integration.billing_server import (
    BillingServer,
    billing_server,
    event,
    last_period_instant,
    long_ago,
)

pytestmark = pytest.mark.timeout(60)

ACCEPTED = quota_pb2.RecordUsageResponse.ACCEPTED
DUPLICATE = quota_pb2.RecordUsageResponse.DUPLICATE
REJECTED = quota_pb2.RecordUsageResponse.REJECTED


@pytest.fixture
async def server(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, ledger_url: str
) -> AsyncIterator[BillingServer]:
    async with billing_server(
        tmp_path,
        redis_url=redis_url,
        key_prefix=redis_key_prefix,
        database_url=ledger_url,
        flush_interval=timedelta(milliseconds=200),
    ) as running:
        yield running


async def test_accepted_events_reach_the_ledger(server: BillingServer) -> None:
    tenant = await server.tenant(created_at=long_ago())
    reply = await server.record(event(tenant, 5), event(tenant, 7, at=last_period_instant()))
    assert (reply.accepted, reply.duplicate, reply.rejected) == (2, 0, 0)
    assert await server.ledger_units(tenant) == 12


async def test_a_bad_event_is_rejected_alone_with_its_reason(server: BillingServer) -> None:
    tenant = await server.tenant()
    unknown = "00000000-0000-4000-8000-000000000000"
    now = datetime.now(UTC)
    reply = await server.record(
        event(tenant, 0),
        event(tenant, 10**9 + 1),
        event(unknown, 1),
        event("not-a-uuid", 1),
        event(tenant, 1, metric="rating.bulk"),
        event(tenant, 1, at=now + timedelta(minutes=10)),
        event(tenant, 1, at=now - timedelta(days=70)),
        event(tenant, 1, event_id=""),
        event(tenant, 1, at=last_period_instant()),
        event(tenant, 3),
    )
    reasons = [(r.outcome, r.reason) for r in reply.results]
    assert [outcome for outcome, _ in reasons] == [REJECTED] * 9 + [ACCEPTED]
    for word, (_, reason) in zip(
        [
            "quantity",
            "quantity",
            "does not exist",
            "tenant_id",
            "metric",
            "future",
            "open period",
            "event_id",
            "first period",
        ],
        reasons,
        strict=False,
    ):
        assert word in reason
    assert (reply.accepted, reply.rejected) == (1, 9)
    assert await server.ledger_units(tenant) == 3


async def test_a_repeated_batch_changes_nothing(server: BillingServer) -> None:
    tenant = await server.tenant()
    batch = [event(tenant, 4, event_id=f"e{i}") for i in range(3)]
    first = await server.record(*batch)
    again = await server.record(*batch)
    assert first.accepted == 3
    assert [r.outcome for r in again.results] == [DUPLICATE] * 3
    assert await server.ledger_units(tenant) == 12


async def test_a_repeated_event_within_one_batch_is_a_duplicate(server: BillingServer) -> None:
    tenant = await server.tenant()
    reply = await server.record(event(tenant, 2, event_id="x"), event(tenant, 2, event_id="x"))
    assert [r.outcome for r in reply.results] == [ACCEPTED, DUPLICATE]
    assert await server.ledger_units(tenant) == 2


async def test_concurrent_retries_of_one_batch_count_it_once(server: BillingServer) -> None:
    tenant = await server.tenant()
    batch = [event(tenant, 1, event_id=f"c{i}") for i in range(20)]
    replies = await asyncio.gather(*(server.record(*batch) for _ in range(4)))
    assert sum(reply.accepted for reply in replies) == 20
    assert sum(reply.duplicate for reply in replies) == 60
    assert await server.ledger_units(tenant) == 20


async def test_recorded_usage_counts_against_the_monthly_quota(server: BillingServer) -> None:
    tenant = await server.tenant("tiny")  # 10 requests a month
    await server.record(event(tenant, 8))
    assert not (await server.check(tenant, 3)).allowed
    assert (await server.check(tenant, 2)).allowed


async def test_an_event_in_a_finalized_period_is_rejected(server: BillingServer) -> None:
    tenant = await server.tenant(created_at=long_ago())
    last = last_period_instant()
    await server.record(event(tenant, 1, at=last))
    await server.invoice(tenant, last.strftime("%Y-%m"), finalize=True)
    reply = await server.record(event(tenant, 1, at=last))
    assert reply.results[0].outcome == REJECTED
    assert "closed" in reply.results[0].reason


async def test_an_empty_or_oversized_batch_is_invalid(server: BillingServer) -> None:
    tenant = await server.tenant()
    for events in ([], [event(tenant) for _ in range(1001)]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.record(*events)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_checkquota_usage_reaches_the_ledger_within_the_flush_interval(
    server: BillingServer,
) -> None:
    tenant = await server.tenant()
    for _ in range(3):
        assert (await server.check(tenant, 5)).allowed
    for _ in range(100):
        if await server.ledger_units(tenant) == 15:
            break
        await asyncio.sleep(0.05)
    assert await server.ledger_units(tenant) == 15
