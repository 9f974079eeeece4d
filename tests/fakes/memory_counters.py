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

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult

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
        used = [self.counter(*key) for key in keys]
        allowed = all(
            limit.bill or count + call.cost <= limit.limit
            for limit, count in zip(call.limits, used, strict=True)
        )
        overage = _overage(call, used) if allowed else 0
        if allowed and not call.dry_run:
            used = self._charge(call, keys, used, overage)
        result = ConsumeResult(allowed=allowed, used=tuple(used), overage=overage)
        if call.request_id is not None and not call.dry_run:
            kept = ConsumeResult(
                allowed,
                tuple(used),
                replayed=True,
                first_request=call.first_request,
                overage=overage,
            )
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
