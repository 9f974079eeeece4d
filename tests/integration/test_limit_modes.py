"""Shadow limits and spend caps in the engine, on every CounterStore (memory fake and Redis).

One definition, two stores, as ``test_quota_engine.py``: a difference between ``consume.lua``
and ``tests/fakes/memory_counters.py`` fails here. The spend cap's month counters are seeded
at 0 for each new tenant (the seeding wrapper is exercised by ``test_spend_caps.py``); the
engine runs at a fixed clock so every request falls in one second.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from fakes.memory_counters import MemoryCounterStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotaplane.domain.billing.pricing import price_period
from quotaplane.domain.billing.spend_cap import spend_rule, total_minor
from quotaplane.domain.plans.model import MetricPlan, Plan, PlanCatalog, Tier, Volume
from quotaplane.domain.quota.decisions import Decision, DecisionCode, QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.domain.quota.ports import ConsumeCall, CounterStore, SpendCall
from quotaplane.domain.windows import Period, Window, window_start
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.client import command_pipe, redis_client
from quotaplane.storage.redis.counters import RedisCounterStore
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(120)

# The engine's clock, fixed at the start of this module's run: counters expire by the real
# clock, so it must be close to now (a whole second in, every burst falls in one second).
NOW = datetime.now(UTC).replace(microsecond=0)
MONTH = int(window_start(Window.MONTH, NOW).timestamp())
HOUR = int(window_start(Window.HOUR, NOW).timestamp())
PLANS = """
plans:
  shadowed:
    metrics:
      requests:
        limits:
          second: {limit: 10, mode: shadow}
          month: 1000
  capped:
    base_fee: "2.00"
    spend_cap: "12.34"
    metrics:
      requests:
        included: 100
        charge:
          model: graduated
          tiers:
            - {up_to: 500, unit_price: "0.01"}
            - {up_to: 2000, unit_price: "0.004", flat_fee: "0.50"}
            - {up_to: null, unit_price: "0.0015"}
  volume:
    spend_cap: "5.00"
    metrics:
      requests:
        charge:
          model: volume
          tiers:
            - {up_to: 100, unit_price: "0.03"}
            - {up_to: null, unit_price: "0.02", flat_fee: "0.25"}
  two:
    spend_cap: "1.00"
    metrics:
      requests:
        charge: {model: per_unit, unit_price: "0.005"}
        limits: {month: 100000}
      rating.bulk:
        charge: {model: package, package_size: 10, package_price: "0.07"}
      free: {limits: {second: {limit: 1, mode: shadow}}}
"""


class Probe:
    """Month counters and shadow counts of a store, read and seeded without the engine."""

    async def seed(self, tenant_id: str, metric: str, units: int) -> None:
        raise NotImplementedError

    async def month(self, tenant_id: str, metric: str) -> int:
        raise NotImplementedError

    async def shadow(self, tenant_id: str) -> dict[tuple[str, int], int]:
        raise NotImplementedError


class MemoryProbe(Probe):
    def __init__(self, store: MemoryCounterStore) -> None:
        self.store = store

    async def seed(self, tenant_id: str, metric: str, units: int) -> None:
        self.store.seed((tenant_id, metric, "month", MONTH), units, 2**62)

    async def month(self, tenant_id: str, metric: str) -> int:
        return self.store.counter(tenant_id, metric, "month", MONTH)

    async def shadow(self, tenant_id: str) -> dict[tuple[str, int], int]:
        return self.store.shadow_denials(tenant_id)


class RedisProbe(Probe):
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    def _key(self, tenant_id: str, metric: str) -> str:
        return keys.counter_key(self.prefix, tenant_id, metric, "month", MONTH)

    async def seed(self, tenant_id: str, metric: str, units: int) -> None:
        await self.client.set(self._key(tenant_id, metric), units)

    async def month(self, tenant_id: str, metric: str) -> int:
        return int(await self.client.get(self._key(tenant_id, metric)) or 0)

    async def shadow(self, tenant_id: str) -> dict[tuple[str, int], int]:
        raw = await self.client.hgetall(keys.shadow_key(self.prefix, tenant_id))
        return {keys.parse_shadow_field(k): int(v) for k, v in raw.items()}


@dataclass
class Modes:
    engine: QuotaEngine
    tenants: SqlTenantStore
    probe: Probe
    store: CounterStore
    catalog: PlanCatalog
    now: datetime

    async def tenant(self, plan: str) -> str:
        """A tenant billed for the whole month (created before it: no proration)."""
        tenant_id = (await self.tenants.create(name=f"t-{plan}", plan=plan)).id
        for name, metric in self.catalog.get(plan).metrics.items():
            if metric.charge is not None and self.catalog.get(plan).spend_cap is not None:
                await self.probe.seed(tenant_id, name, 0)
        return tenant_id

    async def check(self, tenant_id: str, cost: int = 1, metric: str = "") -> Decision:
        request = QuotaRequest.parse(tenant_id=tenant_id, metric=metric, cost=cost)
        return await self.engine.check(request)


@pytest.fixture(scope="module")
def catalog() -> PlanCatalog:
    return parse_plans(PLANS, "modes.yaml")


@pytest.fixture(params=["memory", "redis"])
async def modes(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    redis_key_prefix: str,
    catalog: PlanCatalog,
) -> AsyncIterator[Modes]:
    url = f"sqlite:///{tmp_path_factory.mktemp('modes') / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    database = create_async_engine_for(url)
    client = redis_client(redis_url, timeout=2.0)
    pipe = command_pipe(redis_url, timeout=2.0)
    store: CounterStore
    probe: Probe
    if request.param == "memory":
        memory = MemoryCounterStore()
        store, probe = memory, MemoryProbe(memory)
    else:
        store = RedisCounterStore(pipe, key_prefix=redis_key_prefix, timeout=2.0)
        probe = RedisProbe(client, redis_key_prefix)
    # Each test's burst in one second: its own instant, a little after the module's NOW
    # (so the month and hour stay NOW's, which the probes read).
    now = max(NOW, datetime.now(UTC).replace(microsecond=0))
    try:
        last_month = Period.of(NOW).start - timedelta(days=1)
        tenants = SqlTenantStore(database, clock=lambda: last_month)
        engine = QuotaEngine(
            tenants=TenantDirectory(tenants),
            plans=lambda: catalog,
            counters=store,
            clock=lambda: now,
        )
        yield Modes(engine, tenants, probe, store, catalog, now)
    finally:
        await pipe.aclose()
        await client.aclose()
        await database.dispose()


# --- shadow limits -------------------------------------------------------------------------


async def test_a_shadow_limit_admits_everything_and_reports_the_would_be_denials(
    modes: Modes,
) -> None:
    tenant = await modes.tenant("shadowed")  # second: 10 in shadow, month: 1000 enforced
    decisions = await asyncio.gather(*(modes.check(tenant) for _ in range(100)))
    assert all(d.allowed and d.code is DecisionCode.OK for d in decisions)
    flagged = [d for d in decisions if d.shadow_denied]
    assert len(flagged) == 90
    assert {d.shadow_denied for d in flagged} == {("requests/second",)}
    hour = int(window_start(Window.HOUR, modes.now).timestamp())
    assert await modes.probe.shadow(tenant) == {("requests/second", hour): 90}
    second = next(s for s in decisions[-1].limits if s.window == "second")
    assert second.shadow and second.remaining == 0


async def test_a_shadow_limit_never_denies_but_an_enforced_one_still_does(modes: Modes) -> None:
    tenant = await modes.tenant("shadowed")
    assert (await modes.check(tenant, cost=999)).allowed  # shadow exceeded 99x over
    denied = await modes.check(tenant, cost=2)  # the enforced month limit refuses
    assert denied.code is DecisionCode.OVER_LIMIT
    assert denied.shadow_denied == ("requests/second",)  # reported, but not counted:
    hour = int(window_start(Window.HOUR, modes.now).timestamp())
    assert await modes.probe.shadow(tenant) == {("requests/second", hour): 1}


async def test_a_shadow_limit_on_a_free_metric_is_counted_too(modes: Modes) -> None:
    tenant = await modes.tenant("two")
    results = [await modes.check(tenant, metric="free") for _ in range(3)]
    assert all(d.allowed for d in results)
    assert [d.shadow_denied for d in results] == [(), ("free/second",), ("free/second",)]
    assert results[0].spend_total is None  # a free metric never touches the spend cap


# --- spend caps ----------------------------------------------------------------------------


def _invoice_minor(catalog: PlanCatalog, plan: str, usage: dict[str, int]) -> int:
    return price_period(Period.of(NOW), catalog.get(plan), usage).total_minor


async def test_a_graduated_cap_admits_exactly_up_to_the_cap(modes: Modes) -> None:
    tenant = await modes.tenant("capped")
    rng = random.Random(3)
    cost = 40
    while cost:
        decision = await modes.check(tenant, cost=cost)
        if decision.code is DecisionCode.SPEND_CAP:
            assert not decision.allowed and decision.spend_cap == Decimal("12.34")
            cost = cost // 2  # shrink towards a single unit, as callers with less to spend
        else:
            assert decision.allowed
            cost = max(cost, rng.randint(1, 40))
    used = await modes.probe.month(tenant, "requests")
    assert _invoice_minor(modes.catalog, "capped", {"requests": used}) <= 1234
    assert _invoice_minor(modes.catalog, "capped", {"requests": used + 1}) > 1234
    # 100 included, 500 x 0.01, 0.50 flat, 1211 x 0.004 = 4.844 -> 4.84: the rounded total
    assert used == 1811
    last = await modes.check(tenant)
    assert (last.code, last.spend_total) == (DecisionCode.SPEND_CAP, Decimal("12.34"))


async def test_concurrent_callers_never_overshoot_the_cap(modes: Modes) -> None:
    tenant = await modes.tenant("capped")
    costs = [random.Random(5).randint(1, 30) for _ in range(400)]
    decisions = await asyncio.gather(*(modes.check(tenant, cost=c) for c in costs))
    admitted = sum(c for c, d in zip(costs, decisions, strict=True) if d.allowed)
    assert admitted == await modes.probe.month(tenant, "requests")
    assert _invoice_minor(modes.catalog, "capped", {"requests": admitted}) <= 1234
    assert any(d.code is DecisionCode.SPEND_CAP for d in decisions)


async def test_volume_tiers_price_every_unit_at_the_tier_of_the_total(modes: Modes) -> None:
    tenant = await modes.tenant("volume")  # <=100 at 0.03; above: all at 0.02 + 0.25
    assert (await modes.check(tenant, cost=99)).spend_total == Decimal("2.97")
    cheaper = await modes.check(tenant, cost=2)  # 101 x 0.02 + 0.25 = 2.27: the total fell
    assert cheaper.allowed and cheaper.spend_total == Decimal("2.27")
    assert (await modes.check(tenant, cost=136)).spend_total == Decimal("4.99")  # 237 units
    denied = await modes.check(tenant)  # 238 units = 5.01
    assert denied.code is DecisionCode.SPEND_CAP and denied.spend_total == Decimal("4.99")
    assert await modes.probe.month(tenant, "requests") == 237


async def test_two_metrics_share_one_cap(modes: Modes) -> None:
    tenant = await modes.tenant("two")  # requests 0.005 each; rating.bulk 0.07 per 10
    assert (await modes.check(tenant, cost=100)).spend_total == Decimal("0.50")
    assert (await modes.check(tenant, cost=61, metric="rating.bulk")).allowed  # 7 x 0.07
    denied = await modes.check(tenant, cost=3)  # 103 x 0.005 = 0.515 -> 0.52: 1.01
    assert denied.code is DecisionCode.SPEND_CAP and denied.spend_total == Decimal("0.99")
    assert (await modes.check(tenant, cost=1)).spend_total == Decimal("1.00")  # 0.505 -> 0.51
    assert (await modes.check(tenant, metric="rating.bulk", cost=9)).allowed  # same package
    assert not (await modes.check(tenant, metric="rating.bulk")).allowed
    usage = {m: await modes.probe.month(tenant, m) for m in ("requests", "rating.bulk")}
    assert usage == {"requests": 101, "rating.bulk": 70}
    assert _invoice_minor(modes.catalog, "two", usage) == 100


# --- the Lua evaluation against the domain's pricing ---------------------------------------


@st.composite
def volume_plans(draw: st.DrawFn) -> Plan:
    bounds = sorted(draw(st.sets(st.integers(1, 3000), max_size=3)))
    tiers = tuple(
        Tier(
            b,
            Decimal(draw(st.integers(0, 99_999))).scaleb(-6),
            Decimal(draw(st.integers(0, 300))).scaleb(-2),
        )
        for b in [*bounds, None]
    )
    metric = MetricPlan("requests", Volume(tiers), draw(st.integers(0, 50)))
    cap = Decimal(draw(st.integers(0, 5000))).scaleb(-2)
    return Plan("v", "USD", Decimal("0.99"), {"requests": metric}, spend_cap=cap)


async def test_the_script_evaluates_the_invoice_total_exactly(modes: Modes) -> None:
    """Dry runs at random usages: the total the store reports is the invoice's (clamped)."""
    catalog = parse_plans(PLANS, "modes.yaml")
    checks: list[tuple[Plan, int]] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(volume_plans(), st.just(catalog.get("capped"))), st.integers(0, 6000))
    def collect(plan: Plan, usage: int) -> None:
        checks.append((plan, usage))

    collect()
    tenant = await modes.tenant("capped")
    for plan, usage in checks:
        rule = spend_rule(plan)
        assert rule is not None
        await modes.probe.seed(tenant, "requests", usage)
        spend = SpendCall(rule, 0, MONTH, 2**62)
        call = ConsumeCall(tenant, "requests", 1, (), HOUR, 2**62, dry_run=True, spend=spend)
        result = await modes.store.consume(call)
        expected = total_minor(rule, {"requests": usage})
        assert result.spend_total == expected, (plan, usage)
        invoice = price_period(Period.of(NOW), plan, {"requests": usage}).total_minor
        assert expected == invoice or (expected > rule.cap_minor and invoice > rule.cap_minor)
        after = price_period(Period.of(NOW), plan, {"requests": usage + 1}).total_minor
        assert result.allowed == (after <= rule.cap_minor)


async def test_a_replay_keeps_the_shadow_limits_and_the_spend_verdict(modes: Modes) -> None:
    shadowed = await modes.tenant("shadowed")
    await modes.check(shadowed, cost=10)
    request = QuotaRequest.parse(tenant_id=shadowed, metric="", cost=1, request_id="r-1")
    first = await modes.engine.check(request)
    again = await modes.engine.check(request)
    assert (again.replayed, again.limits, again.shadow_denied) == (
        True,
        first.limits,
        ("requests/second",),
    )
    assert next(s for s in again.limits if s.window == "second").shadow
    capped = await modes.tenant("volume")
    await modes.check(capped, cost=237)
    request = QuotaRequest.parse(tenant_id=capped, metric="", cost=1, request_id="r-2")
    refused = await modes.engine.check(request)
    replayed = await modes.engine.check(request)
    assert (refused.code, replayed.code, replayed.replayed) == (
        DecisionCode.SPEND_CAP,
        DecisionCode.SPEND_CAP,
        True,
    )
    assert replayed.spend_total == refused.spend_total == Decimal("4.99")
