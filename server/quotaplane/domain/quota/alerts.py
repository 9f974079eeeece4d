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

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from quotaplane.domain.quota.decisions import Decision, QuotaRequest
from quotaplane.domain.windows import Period

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (80, 100)


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
        if state.window != "month" or state.limit <= 0 or state.shadow:
            continue  # a shadow limit is the operator's trial: the tenant is not told
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


def backoff(attempts: int) -> timedelta:
    """Delay before the next attempt: 1 s, 2 s, 4 s ... capped at 10 minutes."""
    return timedelta(seconds=min(600, 2 ** max(0, attempts - 1)))
