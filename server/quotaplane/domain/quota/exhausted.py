"""Denials without a counter-store call where they are certain: exhausted monthly quotas.

A tenant whose monthly ``block`` limit is used up is denied every call on that metric until
the month ends: counters only grow within a window, and a denial consumes nothing (the consume
script is all or nothing). So once the store has answered such a denial, the same answer is
given from process memory, as envoyproxy/ratelimit does with its local cache of over-limit keys.

What keeps it exact:

- The entry is keyed by tenant, metric and the shape of every limit (window, limit, policy).
  A plan change, a plans reload or a raised quota changes that shape, so the next call goes to
  the store again; those reach every replica within ``cache_ttl`` (1 s), like any admin change.
  Suspension is decided before the counters are asked at all.
- It holds only while the month's window is the one it was seen in: a new month asks again.
- Calls with a request id are never answered from it (a repeated id must replay its *first*
  decision, which may have been an admission), nor are dry runs cached.
- Every other limit of the call reports what the store said, or 0 in a newer window: nothing
  of this metric is consumed while the month is exhausted, so a newer window is unused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult, CounterLimit, CounterStore
from quotaplane.domain.windows import Window

MAX_ENTRIES = 100_000

_Shape = tuple[tuple[Window, int, bool, bool], ...]


@dataclass(frozen=True)
class _Exhausted:
    month_start: int
    window_starts: tuple[int, ...]
    used: tuple[int, ...]


def _shape(limits: tuple[CounterLimit, ...]) -> _Shape:
    return tuple((limit.window, limit.limit, limit.bill, limit.shadow) for limit in limits)


def _month_start(limits: tuple[CounterLimit, ...], used: tuple[int, ...] | None) -> int | None:
    """Window start of the exhausted monthly block limit (with ``used``), or of any monthly
    block limit (without)."""
    for index, limit in enumerate(limits):
        if limit.window is not Window.MONTH or limit.bill or limit.shadow:
            continue  # only an enforced, blocking month limit refuses for the whole month
        if used is None or used[index] >= limit.limit:
            return limit.window_start
    return None


class ExhaustedQuotaCache:
    """A CounterStore in front of another that remembers exhausted monthly quotas."""

    def __init__(self, inner: CounterStore, *, max_entries: int = MAX_ENTRIES) -> None:
        self._inner = inner
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str, _Shape], _Exhausted] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        cacheable = call.request_id is None and not call.dry_run
        key = (call.tenant_id, call.metric, _shape(call.limits))
        if cacheable and (answer := self._answer(key, call)) is not None:
            self.hits += 1
            return answer
        result = await self._inner.consume(call)
        if cacheable and not result.allowed:
            self._remember(key, call, result)
        return result

    def _answer(self, key: tuple[str, str, _Shape], call: ConsumeCall) -> ConsumeResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if _month_start(call.limits, None) != entry.month_start:
            del self._entries[key]  # a new month: the store decides again
            return None
        used = tuple(
            count if limit.window_start == start else 0
            for limit, start, count in zip(
                call.limits, entry.window_starts, entry.used, strict=True
            )
        )
        return ConsumeResult(allowed=False, used=used)

    def _remember(
        self, key: tuple[str, str, _Shape], call: ConsumeCall, result: ConsumeResult
    ) -> None:
        month_start = _month_start(call.limits, result.used)
        if month_start is None:
            return  # denied by a shorter window (or a cost larger than what is left): not certain
        starts = tuple(limit.window_start for limit in call.limits)
        self._entries[key] = _Exhausted(month_start, starts, result.used)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
