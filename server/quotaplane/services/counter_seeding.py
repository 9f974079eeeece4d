"""Month counters rebuilt from the ledger, so a Redis that lost its data gives no free quota.

``LedgerSeededCounters`` wraps the counter store. Before a call with a ``month`` limit, it
makes sure the tenant's month counter for the metric is *seeded*: a marker key next to the
counter says the ledger's units for the month were added to it. If the marker is missing
(the first call of the month, or Redis lost its data), the ledger's usage of the month is
summed and added to the counter together with the marker, atomically and once across
replicas (``CounterSeeds.seed``). RecordUsage adds to a counter only once it is seeded, since
the seed reads its events from the ledger.

Checking the marker costs one Redis round trip, so a replica remembers a checked counter for
``recheck`` (10 s) and does not check it again in that time. The limits of the rebuild:

- Usage admitted but not flushed when Redis lost its data is gone: at most one flush interval
  (``QUOTAPLANE_FLUSH_INTERVAL``); Redis persistence (AOF, ``appendfsync everysec``) shrinks
  that to about a second.
- For up to ``recheck`` after the loss, replicas that had checked the counter admit against a
  counter restarted from zero; the seed then adds the ledger's units, which may include some
  of those new units if they were flushed meanwhile: the error is an over-count (the tenant
  is stopped a little early), never free quota.
- If the ledger cannot answer within ``ledger_timeout``, the call goes ahead unseeded (a
  Postgres outage must not stop CheckQuota) and the seed is retried ``retry_after`` later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from quotaplane.domain.billing.ports import CounterSeeds, UsageLedger
from quotaplane.domain.errors import QuotaplaneError
from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult, CounterStore
from quotaplane.domain.windows import Period, Window

log = logging.getLogger(__name__)

MAX_REMEMBERED = 100_000
Key = tuple[str, str, int]  # tenant, metric, month start (unix seconds)


class LedgerSeededCounters:
    """A CounterStore whose month counters are seeded from the ledger before use."""

    def __init__(
        self,
        inner: CounterStore,
        seeds: CounterSeeds,
        ledger: UsageLedger,
        *,
        recheck: timedelta = timedelta(seconds=10),
        ledger_timeout: timedelta = timedelta(milliseconds=500),
        retry_after: timedelta = timedelta(seconds=5),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._seeds = seeds
        self._ledger = ledger
        self._recheck = recheck.total_seconds()
        self._ledger_timeout = ledger_timeout.total_seconds()
        self._retry_after = retry_after.total_seconds()
        self._monotonic = monotonic
        self._valid_until: dict[Key, float] = {}
        self._checks: dict[Key, asyncio.Task[None]] = {}

    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        month = next((lim for lim in call.limits if lim.window is Window.MONTH), None)
        if month is not None:
            key = (call.tenant_id, call.metric, month.window_start)
            if self._valid_until.get(key, 0.0) <= self._monotonic():
                await self._check_once(key)
        return await self._inner.consume(call)

    async def _check_once(self, key: Key) -> None:
        # Concurrent first calls for one counter share one check (and one ledger query).
        task = self._checks.get(key)
        if task is None:
            task = asyncio.ensure_future(self._check(key))
            self._checks[key] = task
            task.add_done_callback(lambda _: self._checks.pop(key, None))
        await asyncio.shield(task)

    async def _check(self, key: Key) -> None:
        tenant_id, metric, start = key
        month_start = datetime.fromtimestamp(start, UTC)
        try:
            if not await self._seeds.is_seeded(tenant_id, metric, month_start):
                units = await self._ledger_units(tenant_id, metric, month_start)
                await self._seeds.seed(tenant_id, metric, month_start, units)
        except (QuotaplaneError, TimeoutError) as error:
            log.warning("month counter of %s/%s not seeded from the ledger: %s", *key[:2], error)
            self._remember(key, self._retry_after)
            return
        self._remember(key, self._recheck)

    async def _ledger_units(self, tenant_id: str, metric: str, month_start: datetime) -> int:
        async with asyncio.timeout(self._ledger_timeout):
            rows = await self._ledger.usage(tenant_id, month_start, Period.of(month_start).end)
        return sum(row.quantity for row in rows if row.metric == metric)

    def _remember(self, key: Key, seconds: float) -> None:
        if len(self._valid_until) >= MAX_REMEMBERED:
            self._valid_until.clear()  # rechecking everything once is cheap; unbounded is not
        self._valid_until[key] = self._monotonic() + seconds
