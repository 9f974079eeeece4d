"""An in-memory CounterStore: the semantics of ``storage/redis/scripts/consume.lua`` in Python.

The quota engine's behaviour suite runs on this store and on Redis from one definition (as
limitador runs one suite over its memory, Redis and disk storages), so a rule that holds only
because of how the Lua script happens to be written shows up as a difference between the two.
It is a real store, not a mock: the engine cannot tell it from Redis. Single process only; the
asyncio event loop makes each ``consume`` atomic (it never awaits in the middle).

What it keeps, like the script: one counter per (tenant, metric, window, window start) with its
expiry, the unflushed units and overage per (tenant, metric, hour start), and the first decision
of each request id, with what was first asked, until its expiry. Like the script, it charges
nothing on a ``seeded`` counter that is missing and answers ``needs_seed`` instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from quotaplane.domain.billing.spend_cap import line_minor
from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult, SpendCall

CounterKey = tuple[str, str, str, int]  # tenant, metric, window name, window start


@dataclass
class _Expiring:
    value: int
    expires_at_ms: int


@dataclass
class MemoryCounterStore:
    """CounterStore in process memory; ``now_ms`` is the clock expiries are read against."""

    now_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    _counters: dict[CounterKey, _Expiring] = field(default_factory=dict)
    _decisions: dict[tuple[str, str], tuple[ConsumeResult, int]] = field(default_factory=dict)
    _unflushed: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    _overage: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    _shadow: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)

    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        now = self.now_ms()
        if call.request_id is not None:
            first = self._decisions.get((call.tenant_id, call.request_id))
            if first is not None and first[1] > now:
                return first[0]
        keys = [self._key(call, limit.window.value, limit.window_start) for limit in call.limits]
        pairs = zip(call.limits, keys, strict=True)
        if any(limit.seeded and not self._exists(key) for limit, key in pairs):
            return ConsumeResult(allowed=False, used=(0,) * len(keys), needs_seed=True)
        spend_keys = self._spend_keys(call)
        for index, key in enumerate(spend_keys):
            if not self._exists(key):
                metric = call.spend.rule.metrics[index].metric if call.spend else None
                return ConsumeResult(False, (0,) * len(keys), needs_seed=True, seed_metric=metric)
        used = [self.counter(*key) for key in keys]
        allowed = all(
            limit.bill or limit.shadow or count + call.cost <= limit.limit
            for limit, count in zip(call.limits, used, strict=True)
        )
        shadow = tuple(
            index
            for index, (limit, count) in enumerate(zip(call.limits, used, strict=True))
            if limit.shadow and count + call.cost > limit.limit
        )
        spend_total, spend_denied = None, False
        if call.spend is not None:
            before, after = self._spend_totals(call.spend, spend_keys, call.cost)
            spend_denied = allowed and after > call.spend.rule.cap_minor
            allowed = allowed and not spend_denied
            spend_total = after if allowed and not call.dry_run else before
        overage = _overage(call, used) if allowed else 0
        if allowed and not call.dry_run:
            used = self._charge(call, keys, used, overage)
            self._charge_spend(call, spend_keys)
            self._count_shadow(call, shadow)
        result = ConsumeResult(
            allowed=allowed,
            used=tuple(used),
            overage=overage,
            shadow_denied=shadow,
            spend_denied=spend_denied,
            spend_total=spend_total,
        )
        if call.request_id is not None and not call.dry_run:
            kept = dataclasses.replace(result, replayed=True, first_request=call.first_request)
            self._decisions[(call.tenant_id, call.request_id)] = (kept, call.dedup_expires_at_ms)
        return result

    def counter(self, tenant_id: str, metric: str, window: str, window_start: int) -> int:
        """A counter's value now (0 once it has expired or was never written)."""
        entry = self._counters.get((tenant_id, metric, window, window_start))
        return entry.value if entry is not None and entry.expires_at_ms > self.now_ms() else 0

    def seed(self, key: CounterKey, value: int, expires_at_ms: int) -> None:
        """Set a counter from the ledger, as the seeding service does through Redis."""
        self._counters[key] = _Expiring(value, expires_at_ms)

    def _exists(self, key: CounterKey) -> bool:
        entry = self._counters.get(key)
        return entry is not None and entry.expires_at_ms > self.now_ms()

    def unflushed(self, tenant_id: str) -> dict[tuple[str, int], int]:
        """Admitted units not yet taken by a flush, per (metric, hour start)."""
        return dict(self._unflushed.get(tenant_id, {}))

    def overage(self, tenant_id: str) -> dict[tuple[str, int], int]:
        """Units admitted past a ``bill`` limit, per (metric, hour start)."""
        return dict(self._overage.get(tenant_id, {}))

    def shadow_denials(self, tenant_id: str) -> dict[tuple[str, int], int]:
        """Admitted calls a shadow limit would have refused, per (limit name, hour start)."""
        return dict(self._shadow.get(tenant_id, {}))

    def _spend_keys(self, call: ConsumeCall) -> list[CounterKey]:
        if call.spend is None:
            return []
        start = call.spend.month_start
        return [(call.tenant_id, p.metric, "month", start) for p in call.spend.rule.metrics]

    def _spend_totals(self, spend: SpendCall, keys: list[CounterKey], cost: int) -> tuple[int, int]:
        """The month's invoice total in minor units now and after ``cost`` more units."""
        rule = spend.rule
        before = after = rule.base_fee_minor
        for index, (pricing, key) in enumerate(zip(rule.metrics, keys, strict=True)):
            usage = self.counter(*key)
            before += line_minor(rule, pricing, usage)
            after += line_minor(rule, pricing, usage + (cost if index == spend.metric_index else 0))
        return before, after

    def _charge_spend(self, call: ConsumeCall, keys: list[CounterKey]) -> None:
        if call.spend is None or call.spend.self_limit is not None:
            return  # no cap, or the month limit's counter is the same and already charged
        key = keys[call.spend.metric_index]
        self._counters[key] = _Expiring(self.counter(*key) + call.cost, call.spend.expires_at_ms)

    def _count_shadow(self, call: ConsumeCall, shadow: tuple[int, ...]) -> None:
        counts = self._shadow.setdefault(call.tenant_id, {})
        for index in shadow:
            name = (f"{call.metric}/{call.limits[index].window.value}", call.hour_start)
            counts[name] = counts.get(name, 0) + 1

    def forget_counter(self, tenant_id: str, metric: str, window: str, window_start: int) -> None:
        """Lose one counter, as a Redis failover without persistence would."""
        self._counters.pop((tenant_id, metric, window, window_start), None)

    def _charge(
        self, call: ConsumeCall, keys: list[CounterKey], used: list[int], overage: int
    ) -> list[int]:
        after = []
        for limit, key, count in zip(call.limits, keys, used, strict=True):
            self._counters[key] = _Expiring(count + call.cost, limit.expires_at_ms)
            after.append(count + call.cost)
        hour = (call.metric, call.hour_start)
        units = self._unflushed.setdefault(call.tenant_id, {})
        units[hour] = units.get(hour, 0) + call.cost
        if overage:
            excess = self._overage.setdefault(call.tenant_id, {})
            excess[hour] = excess.get(hour, 0) + overage
        return after

    @staticmethod
    def _key(call: ConsumeCall, window: str, window_start: int) -> CounterKey:
        return (call.tenant_id, call.metric, window, window_start)


def _overage(call: ConsumeCall, used: list[int]) -> int:
    """The script's overage rule: the largest excess of this call over a ``bill`` limit."""
    excess = [
        min(call.cost, count + call.cost - limit.limit)
        for limit, count in zip(call.limits, used, strict=True)
        if limit.bill and count + call.cost > limit.limit
    ]
    return max(excess, default=0)
