"""Quota threshold notifications: the outbox loop that records and delivers alerts."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from quotaplane.domain.quota.alerts import (
    DEFAULT_THRESHOLDS,
    PendingNotification,
    QuotaAlert,
    backoff,
    crossings,
)
from quotaplane.domain.quota.decisions import Decision, QuotaRequest
from quotaplane.domain.quota.ports import NotificationStore, WebhookSender

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000


MAX_ATTEMPTS = 12


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
            await self._sender.send(pending.id, pending.alert)
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
