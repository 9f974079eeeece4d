"""A gateway decision as HTTP: status, headers and JSON body, for every proxy transport.

Envoy's gRPC Check (``transport/grpc/ext_authz.py``) and its HTTP ext_authz both answer a
client through Envoy, so what the client sees is built here once:

- status: 401 unauthenticated, 403 suspended or misconfigured route, 429 over limit.
- body (denials): ``{"error": ..., "message": ...}``; a 429 adds ``limit`` (the limit that
  refused: name, metric, window, limit, remaining, reset_seconds) and ``retry_after_seconds``
  (a JSON number); a spend-cap 429 has ``"error"`` and ``"reason": "spend_cap"``, ``spend_cap`` and
  ``spend_total`` (decimal strings in the plan's currency) and waits for the month's end.
- rate-limit headers (200 and 429): the x-ratelimit-* trio people already parse, for the
  *current* limit (on 429 the one that refused, else the one with least room), plus
  ``x-ratelimit-policy`` naming it; and the IETF RateLimit header fields draft
  (draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy`` lists every limit
  (``"requests/month";q=10000``, with ``w`` = window seconds where the window has a fixed
  length) and ``RateLimit`` gives the current one (``"requests/month";r=3;t=600``).
  Reset values are delta seconds, rounded up; ``retry-after`` accompanies a 429. Shadow limits
  (a trial the operator watches) are left out of every header and body.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

from quotaplane.domain.quota.decisions import Decision, LimitState
from quotaplane.domain.quota.gateway import GatewayDecision, Verdict
from quotaplane.domain.windows import Window, fixed_length

OVERAGE_BLOCK = "block"


@dataclass(frozen=True)
class Denial:
    status: int
    error: str


DENIALS = {
    Verdict.UNAUTHENTICATED: Denial(401, "unauthenticated"),
    Verdict.SUSPENDED: Denial(403, "tenant_suspended"),
    Verdict.MISCONFIGURED: Denial(403, "route_misconfigured"),
    Verdict.OVER_LIMIT: Denial(429, "rate_limited"),
    Verdict.SPEND_CAP: Denial(429, "spend_cap"),
}


def seconds_until(at: datetime, now: datetime) -> int:
    return max(0, math.ceil((at - now).total_seconds()))


def retry_after_seconds(decision: Decision | None) -> int | None:
    """Whole seconds until a denied call may succeed (rounded up), if the decision says."""
    if decision is None or decision.retry_after is None:
        return None
    return math.ceil(decision.retry_after.total_seconds())


def enforced(decision: Decision) -> tuple[LimitState, ...]:
    """The limits a client sees: shadow limits are the operator's trial, never shown."""
    return tuple(s for s in decision.limits if not s.shadow)


def current_limit(decision: Decision) -> LimitState | None:
    """The limit a client should look at: on a denial the blocking limit that resets last (it
    decides when a retry can succeed), otherwise the one with least room."""
    limits = enforced(decision)
    if not limits:
        return None
    if not decision.allowed:
        blocking = [
            s for s in limits if s.overage_policy == OVERAGE_BLOCK and s.remaining < decision.cost
        ]
        if blocking:
            return max(blocking, key=lambda s: s.reset_at)
    return min(limits, key=lambda s: (s.remaining, s.reset_at))


def _policy_item(state: LimitState) -> str:
    item = f'"{state.name}";q={state.limit}'
    length = fixed_length(Window(state.window))
    return item if length is None else f"{item};w={int(length.total_seconds())}"


def rate_limit_headers(decision: Decision | None, now: datetime) -> list[tuple[str, str]]:
    """Every rate-limit header of a decision (none when it has no limits)."""
    current = None if decision is None else current_limit(decision)
    if decision is None or current is None:
        return []
    reset = str(seconds_until(current.reset_at, now))
    headers = [
        ("x-ratelimit-limit", str(current.limit)),
        ("x-ratelimit-remaining", str(current.remaining)),
        ("x-ratelimit-reset", reset),
        ("x-ratelimit-policy", current.name),
        ("ratelimit-policy", ", ".join(_policy_item(s) for s in enforced(decision))),
        ("ratelimit", f'"{current.name}";r={current.remaining};t={reset}'),
    ]
    if (retry_after := retry_after_seconds(decision)) is not None:
        headers.append(("retry-after", str(retry_after)))
    return headers


def denial_body(outcome: GatewayDecision, now: datetime) -> bytes:
    """The JSON body of a denied request."""
    body: dict[str, object] = {"error": DENIALS[outcome.verdict].error, "message": outcome.reason}
    decision = outcome.decision
    if outcome.verdict is Verdict.SPEND_CAP and decision is not None:
        body["reason"] = decision.code.value  # "spend_cap", as CheckQuota's reason
        body["spend_cap"] = str(decision.spend_cap)
        body["spend_total"] = str(decision.spend_total)
        if (retry_after := retry_after_seconds(decision)) is not None:
            body["retry_after_seconds"] = retry_after
    if outcome.verdict is Verdict.OVER_LIMIT and decision is not None:
        if (state := current_limit(decision)) is not None:
            body["limit"] = {
                "name": state.name,
                "metric": state.metric,
                "window": state.window,
                "limit": state.limit,
                "remaining": state.remaining,
                "reset_seconds": seconds_until(state.reset_at, now),
            }
        if (retry_after := retry_after_seconds(decision)) is not None:
            body["retry_after_seconds"] = retry_after
    return json.dumps(body, separators=(",", ":")).encode()
