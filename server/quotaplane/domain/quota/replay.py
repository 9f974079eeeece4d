"""A request id is an idempotency key: the record its first decision is kept with.

The counter store keeps, next to the first decision's counters, this record of what was asked
(metric, cost) and which limits answered (by name: metric, window, limit, overage policy, and
the reset of the window that applied). A repeat is answered from the record, never from the
plan in force now, so a replay after a plan change is the first answer exactly. A repeat that
asks something else (another metric or cost) is refused, naming the difference, like Stripe
refuses an idempotency key reused with other parameters. How a store writes the record down
is its own business (``storage/redis/replay_records.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.plans.model import Limit
from quotaplane.domain.quota.decisions import QuotaRequest


@dataclass(frozen=True)
class FirstRequest:
    """What a request id was first used for, and the limits (with resets) that answered."""

    metric: str
    cost: int
    limits: tuple[Limit, ...]
    resets: tuple[datetime, ...]


def refuse_if_different(request: QuotaRequest, first: FirstRequest) -> None:
    """InvalidArgument naming every parameter in which ``request`` differs from ``first``."""
    differences: Sequence[str] = [
        f"{name} {was!r} (now {now!r})"
        for name, was, now in (
            ("metric", first.metric, request.metric),
            ("cost", first.cost, request.cost),
        )
        if was != now
    ]
    if differences:
        raise InvalidArgument(
            f"request_id {request.request_id!r} was first used with other parameters: "
            f"{', '.join(differences)}; use a new request_id for a different request"
        )
