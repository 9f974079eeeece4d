"""ExhaustedQuotaCache: certain denials from memory, every uncertain call to the store."""

from __future__ import annotations

from dataclasses import replace

from quotaplane.domain.quota.exhausted import ExhaustedQuotaCache
from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult, CounterLimit
from quotaplane.domain.windows import Window

MONTH_START = 1_796_083_200  # 2026-12-01T00:00:00Z


class InMemoryCounters:
    """All-or-nothing counters per (tenant, metric, window, start), counting the calls made."""

    def __init__(self) -> None:
        self.used: dict[tuple[str, str, Window, int], int] = {}
        self.calls = 0

    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        self.calls += 1
        keys = [(call.tenant_id, call.metric, c.window, c.window_start) for c in call.limits]
        used = tuple(self.used.get(key, 0) for key in keys)
        room = all(
            c.bill or c.shadow or count + call.cost <= c.limit
            for c, count in zip(call.limits, used, strict=True)
        )
        if not room or call.dry_run:
            return ConsumeResult(allowed=room, used=used)
        for key in keys:
            self.used[key] = self.used.get(key, 0) + call.cost
        return ConsumeResult(allowed=True, used=tuple(n + call.cost for n in used))


def month(limit: int, start: int = MONTH_START, bill: bool = False) -> CounterLimit:
    return CounterLimit(Window.MONTH, start, limit, bill, (start + 40 * 86400) * 1000)


def second(limit: int, start: int) -> CounterLimit:
    return CounterLimit(Window.SECOND, start, limit, False, (start + 11) * 1000)


def call(*limits: CounterLimit, cost: int = 1, **fields: object) -> ConsumeCall:
    base = ConsumeCall("t1", "requests", cost, tuple(limits), MONTH_START, 0)
    return replace(base, **fields)  # type: ignore[arg-type]


async def exhaust(cache: ExhaustedQuotaCache, *limits: CounterLimit) -> None:
    while (await cache.consume(call(*limits))).allowed:
        pass


async def test_an_exhausted_month_is_answered_from_memory() -> None:
    store = InMemoryCounters()
    cache = ExhaustedQuotaCache(store)
    await exhaust(cache, month(3))
    calls = store.calls
    for _ in range(50):
        result = await cache.consume(call(month(3)))
        assert not result.allowed and result.used == (3,)
    assert store.calls == calls


async def test_a_raised_limit_or_a_new_month_asks_the_store_again() -> None:
    store = InMemoryCounters()
    cache = ExhaustedQuotaCache(store)
    await exhaust(cache, month(3))
    assert (await cache.consume(call(month(4)))).allowed
    await exhaust(cache, month(4))
    next_month = MONTH_START + 31 * 86400
    assert (await cache.consume(call(month(4, start=next_month)))).allowed


async def test_sub_month_windows_do_not_hide_the_month_and_report_zero_when_newer() -> None:
    store = InMemoryCounters()
    cache = ExhaustedQuotaCache(store)
    await exhaust(cache, month(2), second(10, 100))
    calls = store.calls
    result = await cache.consume(call(month(2), second(10, 101)))
    assert not result.allowed and result.used == (2, 0)
    assert store.calls == calls


async def test_uncertain_denials_are_not_remembered() -> None:
    store = InMemoryCounters()
    cache = ExhaustedQuotaCache(store)
    await exhaust(cache, month(100), second(1, 100))  # denied by the second, not the month
    calls = store.calls
    assert (await cache.consume(call(month(100), second(1, 101)))).allowed
    assert store.calls == calls + 1
    assert not (await cache.consume(call(month(100), cost=200))).allowed  # too big, not exhausted
    assert (await cache.consume(call(month(100)))).allowed


async def test_bill_limits_dry_runs_and_request_ids_always_reach_the_store() -> None:
    store = InMemoryCounters()
    cache = ExhaustedQuotaCache(store)
    await exhaust(cache, month(2))
    calls = store.calls
    await cache.consume(call(month(2), request_id="r-1"))
    await cache.consume(call(month(2), dry_run=True))
    assert store.calls == calls + 2
    assert (await cache.consume(call(month(2, bill=True)))).allowed
    assert len(cache) == 1


async def test_the_cache_is_bounded() -> None:
    store = InMemoryCounters()
    cache = ExhaustedQuotaCache(store, max_entries=3)
    for tenant in range(5):
        while (await cache.consume(call(month(1), tenant_id=f"t{tenant}"))).allowed:
            pass
    assert len(cache) == 3


async def test_a_used_up_shadow_month_is_never_remembered_as_exhausted() -> None:
    store = InMemoryCounters()
    cache = ExhaustedQuotaCache(store)
    shadow_month = replace(month(2), shadow=True)
    await exhaust(cache, shadow_month, second(3, 100))  # the shadow month is 3 over its limit
    assert len(cache) == 0  # denied by the second, not by the month: no certainty
    assert (await cache.consume(call(shadow_month, second(3, 101)))).allowed
