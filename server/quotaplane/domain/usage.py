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
Redis with AOF ``appendfsync everysec`` narrows that to about a second. The quota counters
themselves are rebuilt from the ledger (``counter_rebuild.py``), so no tenant gets its month
afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from quotaplane.domain.billing_ports import (
    PendingFlush,
    QuotaCounters,
    UnflushedUsage,
    UsageLedger,
)
from quotaplane.domain.errors import InvalidArgument, NotFound, QuotaplaneError, Unavailable
from quotaplane.domain.model import (
    EventOutcome,
    EventResult,
    UsageEvent,
    parse_metric,
    parse_tenant_id,
)
from quotaplane.domain.plans import PlanCatalog
from quotaplane.domain.ports import ConsumeCall, ConsumeResult, CounterStore
from quotaplane.domain.quota import TenantLookup, utc_now
from quotaplane.domain.windows import Period, as_utc

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
        on_lag: Callable[[float], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._unflushed = unflushed
        self._ledger = ledger
        self._interval = interval.total_seconds()
        self._sweep_every = max(1, round(sweep_interval / interval))
        self._dirty: set[str] = set()
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


# --- RecordUsage -------------------------------------------------------------------------------

MAX_EVENTS = 1000
MAX_EVENT_QUANTITY = 1_000_000_000
MAX_EVENT_ID = 128
FUTURE_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class RawUsageEvent:
    """A RecordUsage event as sent; ``timestamp`` None means now."""

    event_id: str
    tenant_id: str
    metric: str
    quantity: int
    timestamp: datetime | None = None


class UsageRecorder:
    """RecordUsage: validate each event, store the new ones once, count them.

    Open periods: the current calendar month and the previous one (late events of last month
    are still billed), unless that period's invoice is finalized or paid. Each event is
    judged on its own; a rejected event changes nothing and does not affect the others.
    Accepted events go into ``usage_events`` and ``usage_hourly`` in one transaction (never
    through the flush), then, when they fall in the current period, onto the month counter
    that CheckQuota checks. That last step is best effort: if Redis fails the events are
    still billed, the quota just does not see them.
    """

    def __init__(
        self,
        *,
        tenants: TenantLookup,
        plans: Callable[[], PlanCatalog],
        ledger: UsageLedger,
        counters: QuotaCounters | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._tenants = tenants
        self._plans = plans
        self._ledger = ledger
        self._counters = counters
        self._clock = clock

    async def record(self, events: Sequence[RawUsageEvent]) -> list[EventResult]:
        if not events:
            raise InvalidArgument("events: at least one event is required")
        if len(events) > MAX_EVENTS:
            raise InvalidArgument(f"events: at most {MAX_EVENTS:,} per call, got {len(events):,}")
        now = self._clock()
        checked = [await self._check(raw, now) for raw in events]
        checked = await self._reject_closed(checked)
        valid = [event for event in checked if isinstance(event, UsageEvent)]
        stored = iter(await self._ledger.record_events(valid) if valid else [])
        results = [_result(raw, event, stored) for raw, event in zip(events, checked, strict=True)]
        await self._count(
            [
                e
                for e, r in zip(checked, results, strict=True)
                if r.outcome is EventOutcome.ACCEPTED
            ],
            now,
        )
        return results

    async def _check(self, raw: RawUsageEvent, now: datetime) -> UsageEvent | str:
        try:
            event = parse_event(raw, now)
            tenant = await self._tenants.get(event.tenant_id)
            plan = self._plans().get(tenant.plan)
        except (InvalidArgument, NotFound) as error:
            return error.message
        if not plan.has_metric(event.metric):
            return f"metric {event.metric!r} is not part of plan {plan.name!r}"
        if Period.of(event.occurred_at) < Period.of(tenant.created_at):
            return f"timestamp {event.occurred_at.isoformat()} is before the tenant's first period"
        return event

    async def _reject_closed(self, checked: list[UsageEvent | str]) -> list[UsageEvent | str]:
        tenant_ids = [event.tenant_id for event in checked if isinstance(event, UsageEvent)]
        closed = await self._ledger.closed_periods(tenant_ids) if tenant_ids else set()
        return [
            f"timestamp: period {Period.of(event.occurred_at)} is closed (its invoice is final)"
            if isinstance(event, UsageEvent)
            and (event.tenant_id, str(Period.of(event.occurred_at))) in closed
            else event
            for event in checked
        ]

    async def _count(self, accepted: Sequence[UsageEvent | str], now: datetime) -> None:
        if self._counters is None:
            return
        current = Period.of(now)
        units: dict[tuple[str, str], int] = {}
        for event in accepted:
            if isinstance(event, UsageEvent) and Period.of(event.occurred_at) == current:
                key = (event.tenant_id, event.metric)
                units[key] = units.get(key, 0) + event.quantity
        for (tenant_id, metric), amount in sorted(units.items()):
            try:
                await self._counters.add(tenant_id, metric, current.start, amount)
            except QuotaplaneError as error:
                log.warning("recorded usage not counted against quota: %s", error.message)


def parse_event(raw: RawUsageEvent, now: datetime) -> UsageEvent:
    """Validate one event's fields; InvalidArgument names the first bad one."""
    if not raw.event_id or len(raw.event_id) > MAX_EVENT_ID:
        raise InvalidArgument(f"event_id must be 1-{MAX_EVENT_ID} characters")
    tenant_id = parse_tenant_id(raw.tenant_id)
    metric = parse_metric(raw.metric)
    if not 1 <= raw.quantity <= MAX_EVENT_QUANTITY:
        raise InvalidArgument(f"quantity must be 1..{MAX_EVENT_QUANTITY:,}, got {raw.quantity:,}")
    at = now if raw.timestamp is None else as_utc(raw.timestamp, field_name="timestamp")
    if at > now + FUTURE_SKEW:
        raise InvalidArgument(
            f"timestamp {at.isoformat()} is more than {FUTURE_SKEW} in the future"
        )
    current = Period.of(now)
    if Period.of(at) not in (current, current.previous()):
        raise InvalidArgument(
            f"timestamp {at.isoformat()} is outside the open periods "
            f"({current.previous()} and {current})"
        )
    return UsageEvent(raw.event_id, tenant_id, metric, raw.quantity, at)


def _result(raw: RawUsageEvent, event: UsageEvent | str, stored: Iterator[bool]) -> EventResult:
    if isinstance(event, str):
        return EventResult(raw.event_id, raw.tenant_id, EventOutcome.REJECTED, event)
    outcome = EventOutcome.ACCEPTED if next(stored) else EventOutcome.DUPLICATE
    return EventResult(raw.event_id, raw.tenant_id, outcome)
