"""A request id is an idempotency key: a repeat replays the first decision exactly, a repeat
with other parameters is refused and charges nothing.

Real Redis (the run's, under a private prefix), tenants in a real ledger, the real engine.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.quota.decisions import Decision, QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.domain.windows import Window, window_start
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.client import command_pipe
from quotaplane.storage.redis.counters import RedisCounterStore
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)

BEFORE = parse_plans(
    """
plans:
  metered:
    metrics:
      requests: {limits: {month: 100000}}
      rating.bulk: {limits: {month: 100000}}
""",
    "before",
)
AFTER = parse_plans(  # the plan change: a per-second limit in front of the month
    """
plans:
  metered:
    metrics:
      requests: {limits: {second: 50, month: 100000}}
      rating.bulk: {limits: {month: 100000}}
""",
    "after",
)


@dataclass
class Quota:
    engine: QuotaEngine
    catalog: list[PlanCatalog]
    tenant: str
    redis: aioredis.Redis
    prefix: str
    counters: RedisCounterStore
    directory: TenantDirectory

    async def check(self, *, cost: int, metric: str = "requests", request_id: str) -> Decision:
        request = QuotaRequest.parse(
            tenant_id=self.tenant, metric=metric, cost=cost, request_id=request_id
        )
        return await self.engine.check(request)

    async def month_usage(self, metric: str = "requests") -> int:
        start = int(window_start(Window.MONTH, datetime.now(UTC)).timestamp())
        key = keys.counter_key(self.prefix, self.tenant, metric, Window.MONTH.value, start)
        return int(await self.redis.get(key) or 0)


@pytest.fixture
async def quota(
    redis_url: str, redis_key_prefix: str, database: AsyncEngine
) -> AsyncIterator[Quota]:
    prefix = f"{redis_key_prefix}:rp{uuid.uuid4().hex[:8]}"
    store = SqlTenantStore(database)
    tenant = (await store.create(name="replayer", plan="metered")).id
    catalog = [BEFORE]
    pipe = command_pipe(redis_url, timeout=2.0)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    directory = TenantDirectory(store)
    counters = RedisCounterStore(pipe, key_prefix=prefix, timeout=2.0)
    engine = QuotaEngine(tenants=directory, plans=lambda: catalog[0], counters=counters)
    try:
        yield Quota(engine, catalog, tenant, client, prefix, counters, directory)
    finally:
        await pipe.aclose()
        await client.aclose()


async def test_a_replay_after_a_plan_change_is_the_first_answer(quota: Quota) -> None:
    first = await quota.check(cost=10, request_id="r-1")
    quota.catalog[0] = AFTER
    again = await quota.check(cost=10, request_id="r-1")
    assert again.replayed and not first.replayed
    assert (again.allowed, again.code, again.cost) == (first.allowed, first.code, first.cost)
    assert again.limits == first.limits  # names, windows, limits, remaining, resets
    assert [(s.name, s.remaining) for s in again.limits] == [("requests/month", 99990)]
    assert await quota.month_usage() == 10


async def test_a_retry_after_the_shortest_window_is_still_a_replay(quota: Quota) -> None:
    """A client retries after a timeout, when a per-second window has long ended: the request
    id still answers the first decision and charges nothing (kept 24 h, like Stripe's)."""
    quota.catalog[0] = AFTER  # requests: 50 a second and 100,000 a month
    first = await quota.check(cost=10, request_id="r-late")
    await asyncio.sleep(1.2)  # the first call's second is over
    again = await quota.check(cost=10, request_id="r-late")
    assert again.replayed and again.limits == first.limits
    assert await quota.month_usage() == 10
    ttl = await quota.redis.pttl(keys.dedup_key(quota.prefix, quota.tenant, "r-late"))
    assert 23 * 3600 * 1000 < ttl <= 24 * 3600 * 1000


async def test_the_request_id_lifetime_is_a_setting(quota: Quota) -> None:
    """QUOTAPLANE_REQUEST_ID_TTL: an operator sizes Redis by how long ids are kept."""
    short = QuotaEngine(
        tenants=quota.directory,
        plans=lambda: quota.catalog[0],
        counters=quota.counters,
        request_id_ttl=timedelta(minutes=10),
    )
    request = QuotaRequest.parse(
        tenant_id=quota.tenant, metric="requests", cost=1, request_id="r-ttl"
    )
    await short.check(request)
    ttl = await quota.redis.pttl(keys.dedup_key(quota.prefix, quota.tenant, "r-ttl"))
    assert 9 * 60 * 1000 < ttl <= 10 * 60 * 1000
    assert (await short.check(request)).replayed


@pytest.mark.parametrize(
    ("metric", "cost", "named"),
    [("rating.bulk", 10, "metric 'requests' (now 'rating.bulk')"), ("requests", 5000, "cost 10")],
    ids=["other-metric", "other-cost"],
)
async def test_a_request_id_reused_with_other_parameters_is_refused(
    quota: Quota, metric: str, cost: int, named: str
) -> None:
    await quota.check(cost=10, request_id="r-2")
    with pytest.raises(InvalidArgument, match=r"request_id 'r-2'") as refused:
        await quota.check(cost=cost, metric=metric, request_id="r-2")
    assert named in refused.value.message
    assert await quota.month_usage("requests") == 10
    assert await quota.month_usage("rating.bulk") == 0


async def test_the_same_parameters_replay_without_charging(quota: Quota) -> None:
    first = await quota.check(cost=7, request_id="r-3")
    for _ in range(3):
        again = await quota.check(cost=7, request_id="r-3")
        assert again.replayed and again.limits == first.limits
    assert await quota.month_usage() == 7
