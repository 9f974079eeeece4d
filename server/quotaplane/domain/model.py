"""Domain values: tenants, API keys, quota requests and decisions, usage events.

Plain frozen dataclasses with no I/O and no protobuf. Plans and their limits live in
``plans.py``, money in ``money.py``, windows and billing periods in ``windows.py``,
invoices and their pricing in ``pricing.py``/``invoices``.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from quotaplane.domain.errors import InvalidArgument

DEFAULT_METRIC = "requests"
MAX_COST = 1_000_000
MAX_LABELS = 16
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
MAX_REQUEST_ID = 128
# The longest string any request field may carry (each field has its own, tighter limit).
MAX_TEXT = 4096
_METRIC_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


class TenantStatus(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    plan: str
    status: TenantStatus
    created_at: datetime
    updated_at: datetime
    external_id: str | None = None
    stripe_customer_id: str | None = None
    suspended_reason: str | None = None
    version: int = 1

    @property
    def active(self) -> bool:
        return self.status is TenantStatus.ACTIVE


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


_CANONICAL_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_tenant_id(value: str, *, field_name: str = "tenant_id") -> str:
    """Canonical lowercase UUID string, or InvalidArgument naming the field."""
    if _CANONICAL_UUID_RE.fullmatch(value):  # the usual form, without building a UUID
        return value
    if not value:
        raise InvalidArgument(f"{field_name} is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise InvalidArgument(f"{field_name} must be a UUID, got {shown!r}") from None


def text_problem(value: str, field_name: str, max_chars: int = MAX_TEXT) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL, which Postgres refuses, or too long)."""
    if "\x00" in value:
        return f"{field_name} must not contain NUL characters"
    if len(value) > max_chars:
        return f"{field_name} must be at most {max_chars:,} characters, got {len(value):,}"
    return None


def parse_metric(value: str) -> str:
    """A metric name; empty means ``requests``."""
    if not value:
        return DEFAULT_METRIC
    if not _METRIC_RE.fullmatch(value):
        raise InvalidArgument(
            f"metric {value[:80]!r} is not a metric name (lowercase letters, digits, '_', '.', '-')"
        )
    return value


class DecisionCode(enum.Enum):
    OK = "ok"
    OVER_LIMIT = "over_limit"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class QuotaRequest:
    """A validated CheckQuota request."""

    tenant_id: str
    metric: str
    cost: int
    request_id: str | None = None
    dry_run: bool = False
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(
        cls,
        *,
        tenant_id: str,
        metric: str,
        cost: int,
        request_id: str = "",
        dry_run: bool = False,
        labels: dict[str, str] | None = None,
    ) -> QuotaRequest:
        """Validate raw fields; raises InvalidArgument naming the first bad one."""
        if cost < 0:
            raise InvalidArgument(f"cost must not be negative, got {cost}")
        if cost > MAX_COST:
            raise InvalidArgument(f"cost must be at most {MAX_COST:,}, got {cost:,}")
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id must be at most {MAX_REQUEST_ID} characters")
        return cls(
            tenant_id=parse_tenant_id(tenant_id),
            metric=parse_metric(metric),
            cost=cost or 1,
            request_id=request_id or None,
            dry_run=dry_run,
            labels=_parse_labels(labels or {}),
        )


def _parse_labels(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"labels: at most {MAX_LABELS} entries, got {len(labels)}")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY:
            raise InvalidArgument(f"labels: keys must be 1-{MAX_LABEL_KEY} characters")
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"labels[{key[:MAX_LABEL_KEY]!r}]: value longer than {MAX_LABEL_VALUE} characters"
            )
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class LimitState:
    """One limit after a decision."""

    metric: str
    window: str
    limit: int
    remaining: int
    reset_at: datetime
    overage_policy: str
    overage: int = 0

    @property
    def name(self) -> str:
        return f"{self.metric}/{self.window}"


@dataclass(frozen=True)
class Decision:
    """The answer to a QuotaRequest. Being over a limit is a value, not an exception."""

    allowed: bool
    code: DecisionCode
    cost: int
    limits: tuple[LimitState, ...] = ()
    retry_after: timedelta | None = None
    overage: int = 0
    replayed: bool = False


class EventOutcome(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class UsageEvent:
    """A validated RecordUsage event."""

    event_id: str
    tenant_id: str
    metric: str
    quantity: int
    occurred_at: datetime


@dataclass(frozen=True)
class EventResult:
    event_id: str
    tenant_id: str
    outcome: EventOutcome
    reason: str = ""


@dataclass(frozen=True)
class Page:
    """Where a listing continues: an opaque cursor and a size."""

    size: int = 100
    after: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
