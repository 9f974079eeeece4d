"""How the consume script keeps a request id's ``FirstRequest``: compact JSON next to the first
decision's counters, written once per request id and read only on a repeat."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime

from quotaplane.domain.plans.model import Limit, Overage
from quotaplane.domain.quota.replay import FirstRequest
from quotaplane.domain.windows import Window


@functools.lru_cache(maxsize=1024)
def encode_record(first: FirstRequest) -> str:
    """The record to keep with a first decision (cached: a second's requests share it)."""
    described = [
        [limit.metric, limit.window.value, limit.limit, limit.overage.value, int(reset.timestamp())]
        for limit, reset in zip(first.limits, first.resets, strict=True)
    ]
    body = {"metric": first.metric, "cost": first.cost, "limits": described}
    return json.dumps(body, separators=(",", ":"))


def parse_record(record: str) -> FirstRequest:
    """The FirstRequest a kept record describes."""
    data = json.loads(record)
    limits = tuple(
        Limit(metric, Window(window), int(limit), Overage(overage))
        for metric, window, limit, overage, _ in data["limits"]
    )
    resets = tuple(datetime.fromtimestamp(reset, UTC) for *_, reset in data["limits"])
    return FirstRequest(str(data["metric"]), int(data["cost"]), limits, resets)
