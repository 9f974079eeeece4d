"""A request id is an idempotency key: the record its first decision is kept with.

The counter store keeps, next to the first decision's counters, this record of what was asked
(metric, cost) and which limits answered (by name: metric, window, limit, overage policy, and
the reset of the window that applied). A repeat is answered from the record, never from the
plan in force now, so a replay after a plan change is the first answer exactly. A repeat that
asks something else (another metric or cost) is refused, naming the difference, like Stripe
refuses an idempotency key reused with other parameters.

Records are compact JSON: stored once per request id, read only on a repeat.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.model import QuotaRequest
from quotaplane.domain.plans import Limit, Overage
from quotaplane.domain.windows import Window


@dataclass(frozen=True)
class FirstRequest:
    """What a request id was first used for, and the limits (with resets) that answered."""

    metric: str
    cost: int
    limits: tuple[Limit, ...]
    resets: tuple[datetime, ...]


@functools.lru_cache(maxsize=1024)
def request_record(
    metric: str, cost: int, limits: tuple[Limit, ...], resets: tuple[datetime, ...]
) -> str:
    """The record to keep with a first decision (cached: a second's requests share it)."""
    described = [
        [limit.metric, limit.window.value, limit.limit, limit.overage.value, int(reset.timestamp())]
        for limit, reset in zip(limits, resets, strict=True)
    ]
    return json.dumps({"metric": metric, "cost": cost, "limits": described}, separators=(",", ":"))


def parse_record(record: str) -> FirstRequest:
    data = json.loads(record)
    limits = tuple(
        Limit(metric, Window(window), int(limit), Overage(overage))
        for metric, window, limit, overage, _ in data["limits"]
    )
    resets = tuple(datetime.fromtimestamp(reset, UTC) for *_, reset in data["limits"])
    return FirstRequest(str(data["metric"]), int(data["cost"]), limits, resets)


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
