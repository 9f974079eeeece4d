"""Quota ports: the Protocols the hot path calls, and the values that cross them.

The counter store (``storage/redis/counters.py``) checks and consumes a request's limits in
one atomic step; the tenant lookup and key resolver are the in-process caches of
``services/``. ``app/`` plugs them in. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from quotaplane.domain.billing.spend_cap import SpendRule
from quotaplane.domain.quota.alerts import PendingNotification, QuotaAlert
from quotaplane.domain.quota.replay import FirstRequest
from quotaplane.domain.tenants.model import Tenant
from quotaplane.domain.windows import Window

# --- counters (hot path) ---------------------------------------------------------------------


@dataclass(frozen=True)
class CounterLimit:
    """One limit as the counter store sees it: which window, how much, when the key may go."""

    window: Window
    window_start: int  # unix seconds of the window's start: names the counter
    limit: int
    bill: bool  # overage policy "bill": admit past the limit, mark the excess as overage
    expires_at_ms: int  # unix milliseconds after which the counter is no longer needed
    # A billing-period counter, (re)built from the ledger: the store charges nothing on it
    # while it is missing and answers ``needs_seed`` instead.
    seeded: bool = False
    # A shadow limit never refuses; an admitted call it would have refused is reported.
    shadow: bool = False


@dataclass(frozen=True)
class SpendCall:
    """The spend cap, checked with the limits: the month's invoice total after the call must
    stay within ``rule.cap_minor`` (``domain/billing/spend_cap.py``)."""

    rule: SpendRule
    metric_index: int  # the call's metric among ``rule.metrics``
    month_start: int  # unix seconds: names the month counters (seeded, like month limits)
    expires_at_ms: int
    # The call's limit that counts the same month counter (a month limit), charged once.
    self_limit: int | None = None


@dataclass(frozen=True)
class ConsumeCall:
    """Check ``cost`` units against every limit and consume them on all or none."""

    tenant_id: str
    metric: str
    cost: int
    limits: tuple[CounterLimit, ...]
    hour_start: int  # unix seconds of the UTC hour the admitted units are billed in
    dedup_expires_at_ms: int  # how long a request id's first decision is kept
    request_id: str | None = None
    dry_run: bool = False
    # Kept with the first decision of ``request_id`` and handed back on a repeat
    # (``replay.py``); the store does not read it.
    first_request: FirstRequest | None = None
    spend: SpendCall | None = None


@dataclass(frozen=True)
class ConsumeResult:
    """``used[i]``: limit i's counter after the decision (unchanged for denials and dry runs)."""

    allowed: bool
    used: tuple[int, ...]
    replayed: bool = False
    needs_seed: bool = False  # nothing was decided: a ``seeded`` counter is missing
    # Units of this call past a ``bill`` limit (the largest excess over those limits; for a
    # dry run, what it would be): the store applies the overage rule where it counts.
    overage: int = 0
    first_request: FirstRequest | None = None  # on a replay: what the first decision kept
    # Indices of the shadow limits that would have refused this call.
    shadow_denied: tuple[int, ...] = ()
    spend_denied: bool = False  # refused only because of the spend cap
    # The month's invoice total in minor units after the call (now, if refused); None: no cap.
    spend_total: int | None = None
    # With ``needs_seed``: the metric whose month counter is missing (None: the call's own).
    seed_metric: str | None = None


class CounterStore(Protocol):
    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        """Atomically decide and consume; raises Unavailable when the store cannot answer."""
        ...


# --- tenants -----------------------------------------------------------------------------------


class TenantLookup(Protocol):
    async def get(self, tenant_id: str) -> Tenant:
        """The tenant; NotFound if it does not exist."""
        ...


class KeyResolver(Protocol):
    async def tenant_for_key(self, secret: str) -> tuple[str, str] | None:
        """(tenant_id, key_id) of a valid, unrevoked key; None for anything else."""
        ...


class ClaimResolver(Protocol):
    async def tenant_for_claim(self, claim: str) -> str | None:
        """The id of the tenant a verified token claim names (its id or external id)."""
        ...


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
    async def send(self, notification_id: str, alert: QuotaAlert) -> None:
        """Deliver one notification; raises on any failure (network error, non-2xx answer)."""
        ...
