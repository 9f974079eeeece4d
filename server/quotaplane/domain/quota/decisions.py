"""Quota requests and decisions: what CheckQuota is asked and what it answers.

Plain frozen dataclasses with no I/O and no protobuf. Being over a limit is a ``Decision``
value, never an exception. Tenants live in ``domain/tenants/``, plans and their limits in
``domain/plans/``, usage events and invoices in ``domain/billing/``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.tenants.model import parse_tenant_id

DEFAULT_METRIC = "requests"
MAX_COST = 1_000_000
MAX_LABELS = 16
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
MAX_REQUEST_ID = 128
_METRIC_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


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
    SPEND_CAP = "spend_cap"  # the month's invoice total would exceed the plan's spend cap


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
    shadow: bool = False  # mode shadow: counted and reported, never refuses
    # What the window's counter holds after the decision (None where it was not reported): a
    # shadow limit's may exceed its limit, which ``remaining`` cannot show.
    used: int | None = None

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
    # Names of the shadow limits that would have refused this request.
    shadow_denied: tuple[str, ...] = ()
    # The spend cap and the month's invoice total after this decision (now, if refused), in
    # the plan's currency; None without a cap.
    spend_cap: Decimal | None = None
    spend_total: Decimal | None = None
