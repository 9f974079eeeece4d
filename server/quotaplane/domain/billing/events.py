"""Usage events as values: a validated RecordUsage event and what became of it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


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
