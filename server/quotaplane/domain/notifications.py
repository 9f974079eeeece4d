"""Quota threshold notifications: tell a tenant's webhook when it crosses 80% and 100% of a quota.

Detection is pure and happens on the hot path without I/O: ``crossings`` looks at an admitted
decision's monthly limits and reports each threshold that this decision's units stepped over
(used before < ceil(quota * t / 100) <= used after). Because counters are atomic, exactly one
decision per replica set crosses a given boundary; the store's UNIQUE (tenant, period, metric,
threshold) turns a second report (a retry, a counter rebuilt after Redis lost data) into a no-op.

Delivery is an outbox: ``Notifier.observe`` queues alerts in memory (bounded; overflow is
logged and dropped, never blocking a decision), ``Notifier.run`` records them and delivers due
ones with exponential backoff. A replica claims a notification before sending it, so replicas
do not send the same one at the same moment; delivery is at least once (a crash after the send
and before the acknowledgement resends it), and receivers deduplicate by the notification id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from quotaplane.domain.model import Decision, QuotaRequest
from quotaplane.domain.windows import Period

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (80, 100)
QUEUE_LIMIT = 10_000
MAX_ATTEMPTS = 12


@dataclass(frozen=True)
class QuotaAlert:
    tenant_id: str
    period: str
    metric: str
    threshold: int
    used: int
    quota: int
    occurred_at: datetime


@dataclass(frozen=True)
class PendingNotification:
    id: str
    alert: QuotaAlert
    attempts: int


def crossings(
    request: QuotaRequest, decision: Decision, now: datetime, thresholds: Sequence[int]
) -> list[QuotaAlert]:
    """Thresholds of monthly limits that this admitted decision crossed."""
    if not decision.allowed or request.dry_run or decision.replayed:
        return []
    alerts = []
    for state in decision.limits:
        if state.window != "month" or state.limit <= 0:
            continue
        used_after = state.limit - state.remaining + state.overage
        used_before = used_after - decision.cost
        for threshold in thresholds:
            boundary = math.ceil(state.limit * threshold / 100)
            if used_before < boundary <= used_after:
                alerts.append(
                    QuotaAlert(
                        request.tenant_id,
                        str(Period.of(now)),
                        state.metric,
                        threshold,
                        used_after,
                        state.limit,
                        now,
                    )
                )
    return alerts


def payload(notification_id: str, alert: QuotaAlert) -> bytes:
    """The JSON body a webhook receives."""
    return json.dumps(
        {
            "id": notification_id,
            "type": "quota.threshold_crossed",
            "tenant_id": alert.tenant_id,
            "period": alert.period,
            "metric": alert.metric,
            "threshold_percent": alert.threshold,
            "used": alert.used,
            "quota": alert.quota,
            "occurred_at": alert.occurred_at.isoformat(),
        },
        separators=(",", ":"),
    ).encode()


class NotificationStore(Protocol):
    async def record(self, notification_id: str, alert: QuotaAlert) -> bool:
        """Store a new notification; False when (tenant, period, metric, threshold) exists."""
        ...

    async def claim_due(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[PendingNotification]:
        """Undelivered notifications due now, each leased to this caller until now + lease."""
        ...

    async def delivered(self, notification_id: str, at: datetime) -> None: ...

    async def failed(self, notification_id: str, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt; ``retry_at`` None gives up on it."""
        ...


class WebhookSender(Protocol):
    async def send(self, body: bytes) -> None:
        """Deliver one body; raises on any failure (network error, non-2xx answer)."""
        ...


def backoff(attempts: int) -> timedelta:
    """Delay before the next attempt: 1 s, 2 s, 4 s ... capped at 10 minutes."""
    return timedelta(seconds=min(600, 2 ** max(0, attempts - 1)))


class Notifier:
    def __init__(
        self,
        store: NotificationStore,
        sender: WebhookSender,
        *,
        thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
        poll_interval: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._sender = sender
        self._thresholds = tuple(thresholds)
        self._poll = poll_interval
        self._clock = clock
        self._queue: deque[QuotaAlert] = deque()

    def observe(self, request: QuotaRequest, decision: Decision) -> None:
        """Called for every decision; cheap unless a threshold was crossed."""
        for alert in crossings(request, decision, self._clock(), self._thresholds):
            if len(self._queue) >= QUEUE_LIMIT:
                log.error("notification queue full; dropped", extra={"tenant_id": alert.tenant_id})
            else:
                self._queue.append(alert)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a ledger outage must not end the loop; alerts stay queued
                log.exception("notification tick failed; retrying")
            await asyncio.sleep(self._poll)

    async def tick(self) -> int:
        """Record queued alerts, then deliver what is due. Returns deliveries made."""
        while self._queue:
            alert = self._queue[0]  # removed only once stored: a ledger outage keeps it queued
            recorded = await self._store.record(str(uuid.uuid4()), alert)
            self._queue.popleft()
            if recorded:
                log.info(
                    "quota threshold crossed",
                    extra={
                        "tenant_id": alert.tenant_id,
                        "metric": alert.metric,
                        "threshold": alert.threshold,
                    },
                )
        delivered = 0
        for pending in await self._store.claim_due(self._clock(), timedelta(seconds=30), 100):
            delivered += await self._deliver(pending)
        return delivered

    async def _deliver(self, pending: PendingNotification) -> int:
        try:
            await self._sender.send(payload(pending.id, pending.alert))
        except Exception as error:
            attempts = pending.attempts + 1
            retry_at = self._clock() + backoff(attempts) if attempts < MAX_ATTEMPTS else None
            await self._store.failed(pending.id, f"{type(error).__name__}: {error}"[:500], retry_at)
            log.warning(
                "webhook delivery failed",
                extra={"notification": pending.id, "attempts": attempts, "error": str(error)[:200]},
            )
            return 0
        await self._store.delivered(pending.id, self._clock())
        return 1
