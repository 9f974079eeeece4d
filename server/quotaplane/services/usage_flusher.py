"""Admitted usage reaching the ledger exactly once: the flush from Redis to usage_hourly.

The flush (``UsageFlusher``), per tenant:

1. Replay the tenant's pending records first (left by a crash or a failed ledger write).
2. ``take``: one Redis script renames the tenant's unflushed hash to a pending record named by
   a fresh flush id. CheckQuota calls after it start a new hash; nothing is lost or shared.
3. ``apply_flush``: one ledger transaction inserts the flush id (primary key) and adds the
   units to the hourly usage; a flush id applied before adds nothing.
4. ``complete``: delete the pending record.

A crash between any two steps leaves a pending record that step 1 (of any replica) applies
later; applying it twice is refused by the flush id. Several replicas may flush one tenant at
once: each ``take`` gets a disjoint part of the usage, and a record two replicas replay is
counted once. If the ledger is down, step 3 fails, the record stays in Redis, the tenant stays
dirty and is retried next interval; nothing new is taken until waiting records are in, so
records do not pile up during an outage.

A tick does this for all dirty tenants at once: the Redis calls run concurrently (bounded)
and step 3 is ONE transaction for every tenant's records (two when records were waiting:
those go first; markers, then hourly rows, each in one global order, so concurrent replicas
cannot deadlock). If the ledger refuses that
transaction (say, usage of a tenant it does not know), the records are applied one by one
and only the refused ones wait. Step 1 runs only for tenants that may have records: found
by a sweep, or whose last flush failed; ``flush_tenant`` (GenerateInvoice) always runs it.

Which tenants to flush: each replica remembers the tenants it admitted usage for
(``UsageTrackingCounters`` wraps the counter store; a set in memory costs nothing on the hot
path). That set misses the usage of a replica that died before its flush, so every
``sweep_interval`` (and at start) one ``SCAN`` over the unflushed keys adds every tenant
with unflushed usage or pending records. The SCAN walks the keyspace, which is why it is the
safety net and not the tick; the most it delays usage of a dead replica is one sweep interval.

If Redis loses its data (restart without persistence), what had not been flushed is lost:
at most one flush interval of admitted usage (plus a sweep interval for a dead replica's);
Redis with AOF ``appendfsync everysec`` narrows that to about a second. The quota counters
themselves are rebuilt from the ledger (``counter_seeding.py``), so no tenant gets its month
afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar, cast

from quotaplane.domain.billing.ports import PendingFlush, UnflushedUsage, UsageLedger
from quotaplane.domain.errors import QuotaplaneError, Unavailable
from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult, CounterStore

log = logging.getLogger(__name__)

DEFAULT_SWEEP_INTERVAL = timedelta(seconds=30)
FLUSH_CONCURRENCY = 16  # Redis calls in flight at once during a tick
T = TypeVar("T")


@dataclass(frozen=True)
class FlushReport:
    tenants: int = 0  # tenants flushed without error
    flushes: int = 0  # records applied (new or replayed)
    failed: int = 0  # tenants left dirty by an error


class UsageFlusher:
    """Moves admitted usage from Redis into the ledger (see the module docstring)."""

    def __init__(
        self,
        unflushed: UnflushedUsage,
        ledger: UsageLedger,
        *,
        interval: timedelta = timedelta(seconds=1),
        sweep_interval: timedelta = DEFAULT_SWEEP_INTERVAL,
        on_lag: Callable[[float], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._unflushed = unflushed
        self._ledger = ledger
        self._interval = interval.total_seconds()
        self._sweep_every = max(1, round(sweep_interval / interval))
        self._dirty: set[str] = set()
        self._suspects: set[str] = set()  # tenants that may have pending records
        self._on_lag = on_lag
        self._monotonic = monotonic
        self._clean_at = monotonic()

    def mark_dirty(self, tenant_id: str) -> None:
        self._dirty.add(tenant_id)

    @property
    def dirty(self) -> frozenset[str]:
        return frozenset(self._dirty)

    async def flush_tenant(self, tenant_id: str) -> int:
        """Everything of the tenant that waits in Redis, into the ledger; records applied."""
        applied = 0
        for flush in await self._unflushed.pending(tenant_id):
            applied += await self._apply(flush)
        taken = await self._unflushed.take(tenant_id)
        if taken is not None:
            applied += await self._apply(taken)
        return applied

    async def tick(self) -> FlushReport:
        """Flush every dirty tenant: waiting records first, then one take per tenant.

        Each phase is one ledger transaction for all tenants. Records that may be waiting (the
        tenant was found by a sweep or its last flush failed) are applied before anything new
        is taken, so during an outage each tick retries the same records instead of piling up
        new ones. An outage leaves every tenant dirty and raises.
        """
        tenants = sorted(self._dirty)
        self._dirty.clear()
        if not tenants:
            return FlushReport()
        try:
            suspects = [tenant for tenant in tenants if tenant in self._suspects]
            groups = await self._concurrently([self._unflushed.pending(t) for t in suspects])
            waiting = [flush for group in groups for flush in group]
            refused = await self._apply_and_complete(waiting)
            fresh = [tenant for tenant in tenants if tenant not in refused]
            taken = await self._concurrently([self._unflushed.take(t) for t in fresh])
            flushes = [flush for flush in taken if flush is not None]
            refused |= await self._apply_and_complete(flushes)
        except Unavailable:
            self._dirty.update(tenants)
            self._suspects.update(tenants)
            raise
        self._suspects.difference_update(tenants)
        self._suspects.update(refused)
        return FlushReport(len(tenants) - len(refused), len(waiting) + len(flushes), len(refused))

    async def _apply_and_complete(self, flushes: Sequence[PendingFlush]) -> set[str]:
        refused = await self._apply_all(flushes)
        done = [flush for flush in flushes if flush.tenant_id not in refused]
        await self._concurrently([self._unflushed.complete(flush) for flush in done])
        return refused

    async def _apply_all(self, flushes: Sequence[PendingFlush]) -> set[str]:
        """Apply in one transaction; if the ledger refuses it, one by one. Refused tenants."""
        with_usage = [flush for flush in flushes if flush.usage]
        if not with_usage:
            return set()
        try:
            await self._ledger.apply_flushes(with_usage)
            return set()
        except Unavailable:
            raise
        except QuotaplaneError:
            pass
        refused: set[str] = set()
        for flush in with_usage:
            try:
                await self._ledger.apply_flushes([flush])
            except Unavailable:
                raise
            except QuotaplaneError as error:
                # Not an outage (e.g. a tenant the ledger does not know): the record stays in
                # Redis for a later attempt, and the other tenants' usage goes through.
                log.error("usage flush of tenant %s refused: %s", flush.tenant_id, error.message)
                refused.add(flush.tenant_id)
        return refused

    async def _concurrently(self, calls: Sequence[Awaitable[T]]) -> list[T]:
        limit = asyncio.Semaphore(FLUSH_CONCURRENCY)

        async def bounded(call: Awaitable[T]) -> T:
            async with limit:
                return await call

        # Every call finishes before an error is raised: none is left running unobserved.
        results = await asyncio.gather(*(bounded(call) for call in calls), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return cast(list[T], results)

    async def sweep(self) -> FlushReport:
        """Find every tenant with usage in Redis (SCAN), then flush them all."""
        found = await self._unflushed.tenants_with_usage()
        self._dirty |= found
        self._suspects |= found  # they may hold records a dead replica left behind
        return await self.tick()

    async def run(self) -> None:
        """Sweep at start, tick every interval, sweep every sweep interval; until cancelled."""
        ticks = 0
        while True:
            sweep = ticks % self._sweep_every == 0
            ticks += 1
            try:
                await (self.sweep() if sweep else self.tick())
            except Unavailable as error:
                log.warning("usage flush postponed: %s", error.message)
            except Exception:
                log.exception("usage flush failed")
            self._report_lag()
            await asyncio.sleep(self._interval)

    def _report_lag(self) -> None:
        # The flush lag: time since every usage this replica knew of was in the ledger, an
        # upper bound of the age of the oldest unflushed unit (0 while flushes keep up).
        now = self._monotonic()
        if not self._dirty:
            self._clean_at = now
        if self._on_lag is not None:
            self._on_lag(now - self._clean_at)

    async def _apply(self, flush: PendingFlush) -> int:
        if flush.usage:
            await self._ledger.apply_flush(flush)
        await self._unflushed.complete(flush)
        return 1


class UsageTrackingCounters:
    """A CounterStore that tells the flusher which tenants it admitted usage for."""

    def __init__(self, inner: CounterStore, on_usage: Callable[[str], None]) -> None:
        self._inner = inner
        self._on_usage = on_usage

    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        try:
            result = await self._inner.consume(call)
        except BaseException:
            # A call that timed out may still have been applied by Redis.
            self._on_usage(call.tenant_id)
            raise
        if result.allowed and not call.dry_run:
            self._on_usage(call.tenant_id)
        return result
