"""RecordUsage: usage measured elsewhere, validated per event and stored exactly once.

Each event is judged on its own (see ``UsageRecorder``); the ``(tenant_id, event_id)`` primary
key of ``usage_events`` deduplicates retries across replicas in the transaction that adds the
event to ``usage_hourly``. Events never go through the Redis flush.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from quotaplane.domain.billing.events import EventOutcome, EventResult, UsageEvent
from quotaplane.domain.billing.ports import QuotaCounters, Recorded, UsageLedger
from quotaplane.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QuotaplaneError,
)
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.overrides import effective_plan
from quotaplane.domain.quota.decisions import parse_metric
from quotaplane.domain.quota.engine import utc_now
from quotaplane.domain.quota.ports import TenantLookup
from quotaplane.domain.tenants.model import parse_tenant_id
from quotaplane.domain.text import text_problem
from quotaplane.domain.windows import Period, as_utc

log = logging.getLogger(__name__)


MAX_EVENTS = 1000
MAX_EVENT_QUANTITY = 1_000_000_000
MAX_EVENT_ID = 128
FUTURE_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class RawUsageEvent:
    """A RecordUsage event as sent; ``timestamp`` None means now. ``problem``: what the
    transport could not decode in this event (it is then rejected alone, with that reason)."""

    event_id: str
    tenant_id: str
    metric: str
    quantity: int
    timestamp: datetime | None = None
    problem: str = ""


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
        valid = [event for event in checked if isinstance(event, UsageEvent)]
        recorded = iter(await self._ledger.record_events(valid) if valid else [])
        results = [
            _result(raw, event, recorded) for raw, event in zip(events, checked, strict=True)
        ]
        accepted = [
            event
            for event, result in zip(checked, results, strict=True)
            if result.outcome is EventOutcome.ACCEPTED
        ]
        await self._count(accepted, now)
        return results

    async def _check(self, raw: RawUsageEvent, now: datetime) -> UsageEvent | str:
        try:
            event = parse_event(raw, now)
            tenant = await self._tenants.get(event.tenant_id)
            plan = effective_plan(self._plans(), tenant.plan, tenant.overrides)
        except (InvalidArgument, NotFound, FailedPrecondition) as error:
            return error.message
        if not plan.has_metric(event.metric):
            return f"metric {event.metric!r} is not part of plan {plan.name!r}"
        if Period.of(event.occurred_at) < Period.of(tenant.created_at):
            return f"timestamp {event.occurred_at.isoformat()} is before the tenant's first period"
        return event

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
    if raw.problem:
        raise InvalidArgument(raw.problem)
    if not raw.event_id:
        raise InvalidArgument(f"event_id must be 1-{MAX_EVENT_ID} characters")
    if problem := text_problem(raw.event_id, "event_id", MAX_EVENT_ID):
        raise InvalidArgument(problem)
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


def _result(
    raw: RawUsageEvent, event: UsageEvent | str, recorded: Iterator[Recorded]
) -> EventResult:
    if isinstance(event, str):
        return EventResult(raw.event_id, raw.tenant_id, EventOutcome.REJECTED, event)
    outcome = next(recorded)
    if outcome is Recorded.CLOSED:
        reason = (
            f"timestamp: period {Period.of(event.occurred_at)} is closed (its invoice is final)"
        )
        return EventResult(raw.event_id, raw.tenant_id, EventOutcome.REJECTED, reason)
    if outcome is Recorded.DUPLICATE:
        return EventResult(raw.event_id, raw.tenant_id, EventOutcome.DUPLICATE)
    return EventResult(raw.event_id, raw.tenant_id, EventOutcome.ACCEPTED)
