"""Usage of metrics priced in Stripe, reported as Stripe Billing Meter events.

A plan's metric with ``stripe_meter: <event_name>`` is still limited by quotaplane, but its
price lives in Stripe: the usage the flusher books into the ledger (``usage_hourly``) is
reported to Stripe as meter events. The rules here are pure; ``services/meter_reporter.py``
runs them over the ports below, ``storage/sql/meters.py`` and ``integrations/stripe``
implement the ports.

- Batching: every interval, each (tenant, metric, hour) whose booked units exceed what was
  already reported becomes one meter event of the difference (``MeterIncrement``), queued in
  the ledger's outbox in the same transaction that moves the hour's reported mark, so a
  replica that crashes queues nothing twice and two replicas never queue one increment twice.
- Identity: an event's ``identifier`` is derived from ledger ids (tenant, metric, hour, and
  the hour's cumulative reported units after it), so a resend carries the same identifier and
  Stripe (which dedups identifiers for 24 h) counts it once.
- Stripe's window: an event's timestamp is its hour's start; Stripe refuses timestamps older
  than 35 days, so such an event is an error that stays visible (failed in the outbox, logged,
  counted), never dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from quotaplane.domain.plans.model import PlanCatalog

STRIPE_MAX_EVENT_AGE = timedelta(days=35)
# Stripe forgets an identifier after 24 h; an event whose fate is unknown is not resent after.
STRIPE_DEDUP_WINDOW = timedelta(hours=24)
DEDUP_SAFETY = timedelta(hours=1)
# Sent events are kept this long, well past Stripe's dedup window, then pruned: what keeps an
# increment from being queued twice is the hour's reported mark, not the sent row; at one
# event per (tenant, metric) every 5 s, keeping them all would grow without bound.
SENT_RETENTION = timedelta(days=3)


def metered_metrics(catalog: PlanCatalog) -> dict[str, dict[str, str]]:
    """plan name -> {metric -> meter event name}, for the plans with metrics priced in Stripe."""
    found = {name: plan.stripe_meters() for name, plan in catalog.plans.items()}
    return {name: meters for name, meters in found.items() if meters}


def meter_identifier(tenant_id: str, metric: str, hour_start: datetime, upto: int) -> str:
    """The meter event's identifier (at most 100 characters, as Stripe allows)."""
    digest = hashlib.sha256(metric.encode()).hexdigest()[:8]
    return f"qp-{tenant_id}-{hour_start:%Y%m%d%H}-{digest}-{upto}"


def too_old(hour_start: datetime, now: datetime) -> bool:
    """Whether Stripe would refuse an event stamped at ``hour_start`` (margin: one minute)."""
    return hour_start < now - STRIPE_MAX_EVENT_AGE + timedelta(minutes=1)


def past_dedup(first_attempt_at: datetime | None, now: datetime) -> bool:
    """Whether a send that may have reached Stripe can no longer be retried safely."""
    if first_attempt_at is None:
        return False
    return now - first_attempt_at > STRIPE_DEDUP_WINDOW - DEDUP_SAFETY


@dataclass(frozen=True)
class MeterJob:
    """One queued meter event, leased by a worker until ``lease_until``."""

    outbox_id: str
    tenant_id: str
    tenant_name: str
    stripe_customer_id: str | None
    metric: str
    event_name: str
    hour_start: datetime
    quantity: int
    identifier: str
    attempts: int
    first_attempt_at: datetime | None
    lease_until: datetime


class MeterOutbox(Protocol):
    """The ledger's side: reported marks, the meter event outbox and its leases."""

    async def queue_increments(
        self, metered: Mapping[str, Mapping[str, str]], *, since: datetime, every: timedelta
    ) -> int:
        """Queue one event per (tenant, metric, hour since ``since``) of a metered plan whose
        booked units exceed its reported mark and whose last batch is ``every`` old, moving
        the mark; the number queued."""
        ...

    async def claim_due(self, *, limit: int, lease_seconds: float) -> list[MeterJob]:
        """Lease up to ``limit`` due pending events (one worker wins each); the first lease of
        an event is noted as its ``first_attempt_at``."""
        ...

    async def set_customer(self, tenant_id: str, customer_id: str) -> None: ...

    async def done(self, job: MeterJob) -> bool: ...

    async def retry_later(self, job: MeterJob, *, delay_seconds: float, error: str) -> bool: ...

    async def fail(self, job: MeterJob, error: str) -> bool: ...

    async def prune_sent(self, *, before: datetime) -> int:
        """Delete events sent before ``before`` (failed ones stay); the number deleted."""
        ...


class MeterGateway(Protocol):
    """The payment provider's side (Stripe's ``v1/billing/meter_events``)."""

    async def create_customer(self, tenant_id: str, name: str, *, idempotency_key: str) -> str: ...

    async def send_meter_event(
        self, event_name: str, customer_id: str, value: int, *, identifier: str, timestamp: int
    ) -> None:
        """Report ``value`` units; an identifier Stripe already has counts as sent."""
        ...
