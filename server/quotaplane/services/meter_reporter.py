"""The meter reporter: usage of metrics priced in Stripe -> Stripe Billing Meter events.

Every replica runs ``MeterReporter.run``. Each interval (``QUOTAPLANE_METER_INTERVAL``, 5 s):

1. ``queue_increments``: what the flusher booked into ``usage_hourly`` since the last batch
   (in the last two hours each interval; in every hour of the last 42 days every 10 minutes),
   per (tenant, metric, hour) of a plan with ``stripe_meter`` metrics, becomes one queued
   meter event in the ledger's outbox (see ``domain/billing/meters.py``: exactly once across
   replicas, identifiers derived from ledger ids). So Stripe gets about one event per
   (tenant, metric) per interval, not one per request.
2. ``send_due``: due events are leased (one worker wins each; fenced like the invoice
   outbox) and sent through ``MeterGateway`` with their identifier and their hour's start as
   timestamp. The tenant's Stripe customer is created first when it has none (the same
   idempotency key as the invoice push, so a tenant gets one customer).

Outcomes: sent, or an identifier Stripe already has (a response lost after Stripe committed)
-> done, kept in the outbox for ``SENT_RETENTION`` (3 days, past Stripe's 24 h dedup; the
hour's reported mark is what keeps an increment from being queued again). 429, 409, 5xx,
network -> retried with exponential backoff that honours ``Retry-After``, without limit (usage
is never lost); a 429 also ends this round, so the rate limit is not hammered. Older than
Stripe's 35-day window, or a retry whose earlier attempt may have reached Stripe more than
~23 h ago (past Stripe's identifier dedup) -> failed, logged at ERROR and counted
(``quotaplane_stripe_meter_events_total{outcome}``), never dropped silently; ``quotaplane
billing reconcile`` shows the difference. Any other error is permanent: failed, logged and
counted the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from quotaplane.domain.billing.meters import (
    SENT_RETENTION,
    STRIPE_MAX_EVENT_AGE,
    MeterGateway,
    MeterJob,
    MeterOutbox,
    metered_metrics,
    past_dedup,
    too_old,
)
from quotaplane.domain.billing.payment_ports import PaymentError
from quotaplane.domain.billing.payments import customer_idempotency_key
from quotaplane.domain.errors import QuotaplaneError
from quotaplane.domain.plans.model import PlanCatalog

log = logging.getLogger(__name__)

# Hours this far back are still looked at, so usage past Stripe's window is reported as an
# error rather than never seen.
LOOK_BACK = STRIPE_MAX_EVENT_AGE + timedelta(days=7)
# Each interval looks at the hours the flusher is booking now; every SWEEP_EVERY, at all of
# LOOK_BACK, for usage booked late into an older hour (RecordUsage with an old timestamp, a
# flush after a long ledger outage). Scanning 42 days of every metered tenant's hours every
# 5 s would cost far more than the rare late hour is worth.
RECENT = timedelta(hours=2)
SWEEP_EVERY = timedelta(minutes=10)
RATE_LIMITED = "rate_limit"  # PaymentError.code of a 429


class MeterReporter:
    """See the module docstring."""

    def __init__(
        self,
        outbox: MeterOutbox,
        gateway: MeterGateway,
        plans: Callable[[], PlanCatalog],
        *,
        interval: timedelta = timedelta(seconds=5),
        lease: timedelta = timedelta(seconds=10),
        batch: int = 20,
        base_backoff: timedelta = timedelta(seconds=1),
        max_backoff: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._gateway = gateway
        self._plans = plans
        self._interval = interval.total_seconds()
        # A little under the interval: a tick that comes a few ms early still batches.
        self._every = interval * 0.9
        self._lease = lease.total_seconds()
        self._batch = batch
        self._base_backoff = base_backoff.total_seconds()
        self._max_backoff = max_backoff.total_seconds()
        self._clock = clock
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._limited_for = 0.0  # the delay the last 429 asked for
        self._next_sweep = datetime.min.replace(tzinfo=UTC)

    async def run(self) -> None:
        """Forever (cancel to stop); a ledger outage is logged and retried next interval."""
        while True:
            try:
                await self.tick()
            except QuotaplaneError as error:
                log.warning("meter reporting postponed: %s", error.message)
            except Exception:
                log.exception("meter reporting failed")
            await asyncio.sleep(self._interval)

    async def tick(self) -> int:
        """Queue what was booked since the last batch, then send what is due; events sent."""
        now = self._clock()
        since = now - RECENT
        if now >= self._next_sweep:  # also prune, and look at every hour Stripe may take
            await self._outbox.prune_sent(before=now - SENT_RETENTION)
            since, self._next_sweep = now - LOOK_BACK, now + SWEEP_EVERY
        metered = metered_metrics(self._plans())
        if metered:
            await self._outbox.queue_increments(metered, since=since, every=self._every)
        return await self.send_due()

    async def send_due(self) -> int:
        sent = 0
        while True:
            jobs = await self._outbox.claim_due(limit=self._batch, lease_seconds=self._lease)
            for position, job in enumerate(jobs):
                outcome = await self._send(job)
                self._on_outcome(outcome)
                sent += outcome == "ok"
                if outcome == "rate_limited":
                    await self._postpone(jobs[position + 1 :], self._limited_for)
                    return sent
            if len(jobs) < self._batch:
                return sent

    async def _send(self, job: MeterJob) -> str:
        now = self._clock()
        if too_old(job.hour_start, now):
            return await self._fail(job, "too_old", "older than Stripe's 35-day meter window")
        if job.attempts and past_dedup(job.first_attempt_at, now):
            return await self._fail(
                job, "expired", "first tried more than 23 h ago: Stripe may have it and no "
                "longer deduplicates its identifier; check `quotaplane billing reconcile`",
            )  # fmt: skip
        try:
            customer = job.stripe_customer_id or await self._customer(job)
            await self._gateway.send_meter_event(
                job.event_name,
                customer,
                job.quantity,
                identifier=job.identifier,
                timestamp=int(job.hour_start.timestamp()),
            )
        except PaymentError as error:
            return await self._failed(job, error)
        if not await self._outbox.done(job):
            _stale(job, "sent")
        return "ok"

    async def _customer(self, job: MeterJob) -> str:
        key = customer_idempotency_key(job.tenant_id)
        customer = await self._gateway.create_customer(
            job.tenant_id, job.tenant_name, idempotency_key=key
        )
        await self._outbox.set_customer(job.tenant_id, customer)
        return customer

    async def _failed(self, job: MeterJob, error: PaymentError) -> str:
        if not error.retryable:
            return await self._fail(job, "failed", error.message)
        delay = self._delay(job, error)
        if not await self._outbox.retry_later(job, delay_seconds=delay, error=error.message):
            _stale(job, "retry")
        limited = error.code == RATE_LIMITED
        self._limited_for = delay
        log.warning("meter event %s retried in %.1f s: %s", job.identifier, delay, error.message)
        return "rate_limited" if limited else "retried"

    def _delay(self, job: MeterJob, error: PaymentError) -> float:
        backoff = min(self._max_backoff, self._base_backoff * 2.0 ** min(job.attempts, 20))
        return max(backoff, error.retry_after or 0.0)

    async def _postpone(self, jobs: list[MeterJob], delay: float) -> None:
        """The rest of a round cut short by a 429: due again when the limited one is."""
        for job in jobs:
            await self._outbox.retry_later(job, delay_seconds=delay, error="rate limited")

    async def _fail(self, job: MeterJob, outcome: str, reason: str) -> str:
        if not await self._outbox.fail(job, reason):
            _stale(job, "failure")
        log.error(
            "meter event %s (tenant %s, %s, %d units at %s) not reported to Stripe: %s",
            job.identifier,
            job.tenant_id,
            job.metric,
            job.quantity,
            job.hour_start.isoformat(),
            reason,
        )
        return outcome


def _stale(job: MeterJob, what: str) -> None:
    log.warning(
        "meter event %s: %s not recorded, its lease was lost to another worker",
        job.identifier,
        what,
    )
