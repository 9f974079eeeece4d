"""How the consume script keeps a request id's ``FirstRequest``: compact JSON next to the first
decision's counters, written once per request id and read only on a repeat."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime

from quotaplane.domain.plans.model import Limit, LimitMode, Overage
from quotaplane.domain.quota.replay import FirstRequest
from quotaplane.domain.windows import Window


@functools.lru_cache(maxsize=1024)
def encode_record(first: FirstRequest) -> str:
    """The record to keep with a first decision (cached: a second's requests share it)."""
    described = [
        [
            limit.metric,
            limit.window.value,
            limit.limit,
            limit.overage.value,
            int(reset.timestamp()),
            *([limit.mode.value] if limit.shadow else []),
        ]
        for limit, reset in zip(first.limits, first.resets, strict=True)
    ]
    body = {"metric": first.metric, "cost": first.cost, "limits": described}
    return json.dumps(body, separators=(",", ":"))


def parse_record(record: str) -> FirstRequest:
    """The FirstRequest a kept record describes."""
    data = json.loads(record)
    # A record kept before limits had a mode lists five fields: every such limit enforced.
    limits = tuple(
        Limit(
            metric,
            Window(window),
            int(limit),
            Overage(overage),
            LimitMode(mode[0] if mode else LimitMode.ENFORCE),
        )
        for metric, window, limit, overage, _, *mode in data["limits"]
    )
    resets = tuple(datetime.fromtimestamp(item[4], UTC) for item in data["limits"])
    return FirstRequest(str(data["metric"]), int(data["cost"]), limits, resets)
