"""The quota engine's behaviour suite, run on every CounterStore: the in-memory store of
``tests/fakes`` and the run's real Redis (with the Lua script), tenants in a real SQLite ledger.

One definition, two stores (as limitador runs one suite over its storages): each test reads
counters and unflushed usage through a ``Counters`` probe of its store, never through Redis
keys, so a difference between the Lua script and the rule it implements fails a test. Each test
makes its own tenant, so counters never collide; Redis keys live under the run's prefix and are
deleted at session end.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from fakes.memory_counters import MemoryCounterStore

from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.quota.decisions import Decision, DecisionCode, QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.domain.quota.ports import CounterStore
from quotaplane.domain.windows import Window, window_start
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.client import command_pipe, redis_client
from quotaplane.storage.redis.counters import RedisCounterStore
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)

PLANS = """
plans:
  exact:
    metrics:
      requests: {limits: {month: 1000}}
  pair:
    metrics:
      requests: {limits: {minute: 5, month: 100}}
  billed:
    metrics:
      requests:
        charge: {model: per_unit, unit_price: "0.001"}
        limits: {month: {limit: 10, overage: bill}}
  unlimited:
    metrics:
      requests: {charge: {model: per_unit, unit_price: "0.001"}}
  two:
    metrics:
      requests: {limits: {month: 1000}}
      rating.bulk: {limits: {month: 1000}}
"""


Hour = tuple[str, int]  # metric, hour start (unix seconds)


class Counters:
    """What a test may read of a counter store: counters and unflushed usage."""

    async def counter(self, tenant_id: str, window: Window) -> int:
        raise NotImplementedError

    async def unflushed(self, tenant_id: str) -> dict[Hour, int]:
        """Admitted units per (metric, hour) that no flush has taken yet."""
        raise NotImplementedError

    async def overage(self, tenant_id: str) -> dict[Hour, int]:
        raise NotImplementedError


def _window_start(window: Window) -> int:
    return int(window_start(window, datetime.now(UTC)).timestamp())


class MemoryCounters(Counters):
    def __init__(self, store: MemoryCounterStore) -> None:
        self.store = store

    async def counter(self, tenant_id: str, window: Window) -> int:
        return self.store.counter(tenant_id, "requests", window.value, _window_start(window))

    async def unflushed(self, tenant_id: str) -> dict[Hour, int]:
        return self.store.unflushed(tenant_id)

    async def overage(self, tenant_id: str) -> dict[Hour, int]:
        return self.store.overage(tenant_id)


class RedisCounters(Counters):
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def counter(self, tenant_id: str, window: Window) -> int:
        start = _window_start(window)
        key = keys.counter_key(self.prefix, tenant_id, "requests", window.value, start)
        return int(await self.client.get(key) or 0)

    async def unflushed(self, tenant_id: str) -> dict[Hour, int]:
        return {hour: units for (hour, over), units in (await self._hash(tenant_id)) if not over}

    async def overage(self, tenant_id: str) -> dict[Hour, int]:
        return {hour: units for (hour, over), units in (await self._hash(tenant_id)) if over}

    async def _hash(self, tenant_id: str) -> list[tuple[tuple[Hour, bool], int]]:
        raw: dict[str, str] = await self.client.hgetall(keys.unflushed_key(self.prefix, tenant_id))
        parsed = []
        for name, units in raw.items():
            metric, hour, over = keys.parse_unflushed_field(name)
            parsed.append((((metric, hour), over), int(units)))
        return parsed


@dataclass
class Quota:
    engine: QuotaEngine
    tenants: SqlTenantStore
    directory: TenantDirectory
    counters: Counters
    plans: list[PlanCatalog]

    async def tenant(self, plan: str) -> str:
        return (await self.tenants.create(name=f"t-{plan}", plan=plan)).id

    async def check(
        self,
        tenant_id: str,
        *,
        cost: int = 1,
        metric: str = "",
        request_id: str = "",
        dry_run: bool = False,
    ) -> Decision:
        request = QuotaRequest.parse(
            tenant_id=tenant_id, metric=metric, cost=cost, request_id=request_id, dry_run=dry_run
        )
        return await self.engine.check(request)

    async def counter(self, tenant_id: str, window: Window) -> int:
        return await self.counters.counter(tenant_id, window)

    async def unflushed(self, tenant_id: str) -> dict[Hour, int]:
        return await self.counters.unflushed(tenant_id)


@pytest.fixture(scope="module")
def sqlite_ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('quota-engine') / 'ledger.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="module")
def catalog() -> PlanCatalog:
    return parse_plans(PLANS, "test-plans.yaml")


@pytest.fixture(params=["memory", "redis"])
async def counter_store(
    request: pytest.FixtureRequest, redis_url: str, redis_key_prefix: str
) -> AsyncIterator[tuple[CounterStore, Counters]]:
    """Each CounterStore the engine runs on, with the probe its tests read it through."""
    if request.param == "memory":
        memory = MemoryCounterStore()
        yield memory, MemoryCounters(memory)
        return
    client = redis_client(redis_url, timeout=1.0)
    pipe = command_pipe(redis_url, timeout=1.0)
    try:
        store = RedisCounterStore(pipe, key_prefix=redis_key_prefix, timeout=1.0)
        yield store, RedisCounters(client, redis_key_prefix)
    finally:
        await pipe.aclose()
        await client.aclose()


@pytest.fixture
async def quota(
    sqlite_ledger: str, catalog: PlanCatalog, counter_store: tuple[CounterStore, Counters]
) -> AsyncIterator[Quota]:
    database = create_async_engine_for(sqlite_ledger)
    try:
        store = SqlTenantStore(database)
        directory = TenantDirectory(store)
        counters, probe = counter_store
        plans = [catalog]  # a test may put other plans in force
        engine = QuotaEngine(tenants=directory, plans=lambda: plans[0], counters=counters)
        yield Quota(engine, store, directory, probe, plans)
    finally:
        await database.dispose()


async def test_concurrent_callers_admit_exactly_the_quota(quota: Quota) -> None:
    tenant = await quota.tenant("exact")
    rng = random.Random(7)
    costs = [rng.randint(1, 5) for _ in range(1500)]
    decisions = await asyncio.gather(*(quota.check(tenant, cost=c) for c in costs))
    admitted = sum(c for c, d in zip(costs, decisions, strict=True) if d.allowed)
    assert admitted == 1000
    assert await quota.counter(tenant, Window.MONTH) == 1000


async def test_a_denial_on_one_limit_consumes_nothing_on_the_other(quota: Quota) -> None:
    tenant = await quota.tenant("pair")  # minute 5, month 100
    assert (await quota.check(tenant, cost=4)).allowed
    denied = await quota.check(tenant, cost=2)
    assert not denied.allowed
    assert await quota.counter(tenant, Window.MONTH) == 4
    assert await quota.counter(tenant, Window.MINUTE) == 4


async def test_denial_reports_every_limit_and_retry_after_the_blocking_window(quota: Quota) -> None:
    tenant = await quota.tenant("pair")
    await quota.check(tenant, cost=5)
    denied = await quota.check(tenant, cost=1)
    now = datetime.now(UTC)
    assert denied.code is DecisionCode.OVER_LIMIT
    states = {s.window: s for s in denied.limits}
    assert (states["minute"].limit, states["minute"].remaining) == (5, 0)
    assert (states["month"].limit, states["month"].remaining) == (100, 95)
    assert states["minute"].reset_at == window_start(Window.MINUTE, now) + timedelta(minutes=1)
    assert timedelta(0) < denied.retry_after <= timedelta(minutes=1)


async def test_dry_run_consumes_nothing(quota: Quota) -> None:
    tenant = await quota.tenant("exact")
    decision = await quota.check(tenant, cost=5, dry_run=True)
    assert decision.allowed and decision.limits[0].remaining == 1000
    assert await quota.counter(tenant, Window.MONTH) == 0
    assert await quota.unflushed(tenant) == {}


async def test_a_repeated_request_id_replays_the_first_decision_and_charges_once(
    quota: Quota,
) -> None:
    tenant = await quota.tenant("exact")
    first = await quota.check(tenant, cost=3, request_id="req-1")
    again = await quota.check(tenant, cost=3, request_id="req-1")
    assert (first.allowed, first.replayed) == (True, False)
    assert (again.allowed, again.replayed) == (True, True)
    assert again.limits == first.limits
    assert await quota.counter(tenant, Window.MONTH) == 3


async def test_a_denied_request_id_is_replayed_as_denied(quota: Quota) -> None:
    tenant = await quota.tenant("pair")
    await quota.check(tenant, cost=5)
    assert not (await quota.check(tenant, cost=1, request_id="late")).allowed
    replay = await quota.check(tenant, cost=1, request_id="late")
    assert (replay.allowed, replay.replayed) == (False, True)


async def test_a_replay_after_a_plan_change_is_the_first_answer(quota: Quota) -> None:
    tenant = await quota.tenant("pair")  # minute 5, month 100
    first = await quota.check(tenant, cost=2, request_id="before-the-change")
    # The plan now limits the second and the month differently: the replay must not care.
    quota.plans[0] = parse_plans(
        "plans:\n  pair:\n    metrics:\n      requests: {limits: {second: 40, month: 100000}}\n",
        "changed.yaml",
    )
    again = await quota.check(tenant, cost=2, request_id="before-the-change")
    assert again.replayed and (again.allowed, again.limits) == (first.allowed, first.limits)
    assert await quota.counter(tenant, Window.MONTH) == 2


@pytest.mark.parametrize("changed", [{"cost": 5}, {"metric": "rating.bulk"}])
async def test_a_request_id_reused_with_other_parameters_is_refused_and_charges_nothing(
    quota: Quota, changed: dict[str, object]
) -> None:
    tenant = await quota.tenant("two")
    await quota.check(tenant, cost=1, request_id="once")
    with pytest.raises(InvalidArgument, match="request_id 'once' was first used"):
        await quota.check(tenant, request_id="once", **changed)  # type: ignore[arg-type]
    assert await quota.counter(tenant, Window.MONTH) == 1


async def test_bill_overage_admits_past_the_quota_and_records_the_overage(quota: Quota) -> None:
    tenant = await quota.tenant("billed")  # month 10, overage bill
    await quota.check(tenant, cost=8)
    past = await quota.check(tenant, cost=5)
    assert past.allowed and past.overage == 3
    assert past.limits[0].overage == 3 and past.limits[0].remaining == 0
    hour = ("requests", _window_start(Window.HOUR))
    assert await quota.unflushed(tenant) == {hour: 13}
    assert await quota.counters.overage(tenant) == {hour: 3}


async def test_a_dry_run_past_a_bill_limit_reports_its_overage_and_records_none(
    quota: Quota,
) -> None:
    tenant = await quota.tenant("billed")  # month 10, overage bill
    await quota.check(tenant, cost=8)
    would = await quota.check(tenant, cost=5, dry_run=True)
    assert (would.allowed, would.overage) == (True, 3)
    assert await quota.counters.overage(tenant) == {}
    assert await quota.counter(tenant, Window.MONTH) == 8


async def test_a_replay_reports_the_overage_of_the_first_decision(quota: Quota) -> None:
    tenant = await quota.tenant("billed")
    await quota.check(tenant, cost=8)
    first = await quota.check(tenant, cost=5, request_id="past-the-quota")
    again = await quota.check(tenant, cost=5, request_id="past-the-quota")
    assert (first.overage, again.overage, again.replayed) == (3, 3, True)
    assert sum((await quota.counters.overage(tenant)).values()) == 3


async def test_admitted_units_enter_the_unflushed_hash(quota: Quota) -> None:
    tenant = await quota.tenant("unlimited")  # no limits at all: always admitted, still billed
    for cost in (1, 2, 3):
        assert (await quota.check(tenant, cost=cost)).allowed
    assert await quota.unflushed(tenant) == {("requests", _window_start(Window.HOUR)): 6}


async def test_a_suspended_tenant_gets_a_suspended_decision_and_pays_nothing(
    quota: Quota,
) -> None:
    tenant = await quota.tenant("exact")
    await quota.tenants.suspend(tenant, "unpaid")
    decision = await quota.check(tenant, cost=1)
    assert (decision.allowed, decision.code) == (False, DecisionCode.SUSPENDED)
    assert await quota.counter(tenant, Window.MONTH) == 0


async def test_an_unknown_tenant_is_not_found(quota: Quota) -> None:
    with pytest.raises(NotFound):
        await quota.check("7d0ea3a6-2f5e-4a8b-9b0e-5b1c7b0f1d11", cost=1)


async def test_a_metric_outside_the_plan_is_invalid_and_names_metric_and_plan(
    quota: Quota,
) -> None:
    tenant = await quota.tenant("exact")
    with pytest.raises(InvalidArgument, match=r"'rating\.bulk'.*'exact'"):
        await quota.check(tenant, metric="rating.bulk", cost=1)
    assert await quota.unflushed(tenant) == {}


async def test_a_tenant_on_a_removed_plan_is_a_failed_precondition(quota: Quota) -> None:
    tenant = await quota.tenant("retired-plan")
    with pytest.raises(FailedPrecondition, match="retired-plan"):
        await quota.check(tenant, cost=1)


@pytest.mark.parametrize(
    "fields",
    [
        {"tenant_id": ""},
        {"tenant_id": "not-a-uuid"},
        {"cost": -1},
        {"cost": 10**9},
        {"metric": "Bad Metric!"},
        {"labels": {"k": "v" * 300}},
        {"request_id": "r" * 200},
    ],
    ids=[
        "empty-tenant",
        "malformed-tenant",
        "negative-cost",
        "absurd-cost",
        "bad-metric",
        "long-label",
        "long-request-id",
    ],
)
def test_malformed_requests_are_refused_before_anything_runs(fields: dict[str, object]) -> None:
    raw: dict[str, object] = {
        "tenant_id": "7d0ea3a6-2f5e-4a8b-9b0e-5b1c7b0f1d11",
        "metric": "",
        "cost": 1,
        **fields,
    }
    with pytest.raises(InvalidArgument):
        QuotaRequest.parse(**raw)  # type: ignore[arg-type]
