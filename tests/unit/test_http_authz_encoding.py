"""The HTTP ext_authz answers exactly what the gRPC Check answers, for every verdict."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from quotaplane.domain.quota.decisions import Decision, DecisionCode, LimitState
from quotaplane.domain.quota.gateway import GatewayDecision, Verdict
from quotaplane.transport.grpc.ext_authz import check_response
from quotaplane.transport.http.authz import HEADERS_TO_REMOVE, encode
from quotaplane.transport.http.gateway import rate_limit_headers

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
TENANT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def _decision(allowed: bool, remaining: int) -> Decision:
    state = LimitState(
        metric="requests",
        window="month",
        limit=100,
        remaining=remaining,
        reset_at=NOW + timedelta(days=28),
        overage_policy="block",
        overage=0,
    )
    code = DecisionCode.OK if allowed else DecisionCode.OVER_LIMIT
    retry = None if allowed else timedelta(days=28)
    return Decision(allowed=allowed, code=code, cost=1, limits=(state,), retry_after=retry)


OUTCOMES = [
    GatewayDecision(Verdict.ALLOWED, "allowed", TENANT, _decision(True, 41)),
    GatewayDecision(
        Verdict.OVER_LIMIT, "quota or rate limit exceeded", TENANT, _decision(False, 0)
    ),
    GatewayDecision(Verdict.SUSPENDED, "tenant is suspended", TENANT),
    GatewayDecision(Verdict.UNAUTHENTICATED, "missing API key"),
    GatewayDecision(
        Verdict.SPEND_CAP,
        "the month's invoice would exceed the spend cap",
        TENANT,
        Decision(
            allowed=False,
            code=DecisionCode.SPEND_CAP,
            cost=1,
            limits=(),
            retry_after=timedelta(days=28),
            spend_cap=Decimal("12.34"),
            spend_total=Decimal("12.30"),
        ),
    ),
]


def _text(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in pairs}


@pytest.mark.parametrize("outcome", OUTCOMES, ids=lambda o: o.verdict.value)
def test_http_and_grpc_answers_agree(outcome: GatewayDecision) -> None:
    status, headers, body = encode(outcome, NOW)
    grpc = check_response(outcome, NOW)
    if outcome.verdict is Verdict.ALLOWED:
        ok = grpc.ok_response
        expected = {
            o.header.key: o.header.value for o in [*ok.headers, *ok.response_headers_to_add]
        }
        expected[HEADERS_TO_REMOVE] = ",".join(ok.headers_to_remove)
        assert (status, _text(headers), body) == (200, expected, b"")
        return
    denied = grpc.denied_response
    assert status == denied.status.code
    assert _text(headers) == {o.header.key: o.header.value for o in denied.headers}
    assert json.loads(body) == json.loads(denied.body)


def test_a_spend_cap_denial_is_a_429_naming_the_cap_and_the_total() -> None:
    status, _, body = encode(OUTCOMES[-1], NOW)
    assert status == 429
    assert json.loads(body) == {
        "error": "spend_cap",
        "reason": "spend_cap",
        "message": "the month's invoice would exceed the spend cap",
        "spend_cap": "12.34",
        "spend_total": "12.30",
        "retry_after_seconds": 28 * 86400,
    }


def test_shadow_limits_stay_out_of_the_clients_headers() -> None:
    enforced = _decision(True, 41)
    trial = replace(enforced.limits[0], window="second", limit=10, remaining=0, shadow=True)
    decision = replace(
        enforced, limits=(trial, *enforced.limits), shadow_denied=("requests/second",)
    )
    headers = dict(rate_limit_headers(decision, NOW))
    assert headers["x-ratelimit-policy"] == "requests/month"
    assert headers["x-ratelimit-remaining"] == "41"
    assert "second" not in headers["ratelimit-policy"]
