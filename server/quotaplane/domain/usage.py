"""Usage reaching the ledger exactly once: the flush of admitted usage, and RecordUsage.

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
counted once. If the ledger is down, step 1 or 3 fails, the record stays in Redis, the tenant
stays dirty and the tick stops until the next interval; no new records pile up meanwhile.

Which tenants to flush: each replica remembers the tenants it admitted usage for
(``UsageTrackingCounters`` wraps the counter store; a set in memory costs nothing on the hot
path). That set misses the usage of a replica that died before its flush, so every
``sweep_interval`` (and at start) one ``SCAN`` over the unflushed keys adds every tenant
with unflushed usage or pending records. The SCAN walks the keyspace, which is why it is the
safety net and not the tick; the most it delays usage of a dead replica is one sweep interval.

If Redis loses its data (restart without persistence), what had not been flushed is lost:
at most one flush interval of admitted usage (plus a sweep interval for a dead replica's);
Redis with AOF ``appendfsync everysec`` narrows that to about a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from quotaplane.domain.billing_ports import PendingFlush, UnflushedUsage, UsageLedger
from quotaplane.domain.errors import QuotaplaneError, Unavailable
from quotaplane.domain.ports import ConsumeCall, ConsumeResult, CounterStore

log = logging.getLogger(__name__)

DEFAULT_SWEEP_INTERVAL = timedelta(seconds=30)


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
    ) -> None:
        self._unflushed = unflushed
        self._ledger = ledger
        self._interval = interval.total_seconds()
        self._sweep_every = max(1, round(sweep_interval / interval))
        self._dirty: set[str] = set()

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
        """Flush every dirty tenant; stop at the first ledger or Redis outage."""
        flushed = flushes = failed = 0
        for tenant_id in sorted(self._dirty):
            self._dirty.discard(tenant_id)
            try:
                flushes += await self.flush_tenant(tenant_id)
            except Unavailable:
                self._dirty.add(tenant_id)
                raise
            except QuotaplaneError as error:
                # Not an outage (e.g. the ledger refuses the rows): the record stays in Redis
                # for the next sweep, and the other tenants are still flushed.
                failed += 1
                log.error("usage flush of tenant %s failed: %s", tenant_id, error.message)
                continue
            flushed += 1
        return FlushReport(flushed, flushes, failed)

    async def sweep(self) -> FlushReport:
        """Find every tenant with usage in Redis (SCAN), then flush them all."""
        self._dirty |= await self._unflushed.tenants_with_usage()
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
            await asyncio.sleep(self._interval)

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
