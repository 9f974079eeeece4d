"""ext_authz decoding (key, metric, cost) and encoding (allow / 401 / 403 / 429 with headers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from quotaplane.domain.quota.decisions import Decision, DecisionCode, LimitState
from quotaplane.domain.quota.gateway import GatewayDecision, Verdict
from quotaplane.transport.grpc.ext_authz import (
    api_key_of,
    check_response,
    gateway_request,
    request_headers,
)

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
TENANT = "6f1c7a1e-0000-4000-8000-000000000001"


def _check_request(headers: dict[str, str], **extensions: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers.update(headers)
    request.attributes.context_extensions.update(extensions)
    return request


def _limit(window: str, limit: int, remaining: int, reset_in: int) -> LimitState:
    return LimitState(
        "requests", window, limit, remaining, NOW + timedelta(seconds=reset_in), "block"
    )


def _headers(options: object) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"x-api-key": "qp_live_a"}, "qp_live_a"),
        ({"authorization": "Bearer qp_live_b"}, "qp_live_b"),
        ({"authorization": "bearer  qp_live_c "}, "qp_live_c"),
        ({"x-api-key": "qp_live_a", "authorization": "Bearer qp_live_b"}, "qp_live_a"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_the_api_key_comes_from_x_api_key_or_bearer(
    headers: dict[str, str], key: str | None
) -> None:
    assert api_key_of(headers) == key


def test_headers_are_read_from_the_header_map_encoding_too() -> None:
    request = external_auth_pb2.CheckRequest()
    entry = request.attributes.request.http.header_map.headers.add()
    entry.key, entry.raw_value = "X-Api-Key", b"qp_live_raw"
    assert request_headers(request) == {"x-api-key": "qp_live_raw"}


def test_route_metric_and_cost_come_from_context_extensions_as_text() -> None:
    decoded = gateway_request(
        _check_request({"x-api-key": "k"}, metric="rating.bulk", cost="10", route="bulk")
    )
    assert (decoded.api_key, decoded.metric, decoded.cost, decoded.route) == (
        "k",
        "rating.bulk",
        "10",
        "bulk",
    )
    default = gateway_request(_check_request({"x-api-key": "k"}))
    assert (default.metric, default.cost) == ("requests", "1")


@pytest.mark.parametrize("cost", ["-1", "abc", "", "99999999999", "²", "١٢", " 1", "0"])
def test_decoding_never_refuses_a_route_cost_the_gateway_decides(cost: str) -> None:
    assert gateway_request(_check_request({}, cost=cost)).cost == cost


def test_allowed_adds_tenant_strips_key_and_reports_the_tightest_limit() -> None:
    decision = Decision(
        True, DecisionCode.OK, 1, limits=(_limit("second", 10, 9, 1), _limit("month", 1000, 3, 600))
    )
    response = check_response(GatewayDecision(Verdict.ALLOWED, "allowed", TENANT, decision), NOW)
    assert response.status.code == 0
    ok = response.ok_response
    assert _headers(ok.headers) == {"x-tenant-id": TENANT}
    assert set(ok.headers_to_remove) == {"x-api-key", "authorization"}
    assert _headers(ok.response_headers_to_add) == {
        "x-ratelimit-limit": "1000",
        "x-ratelimit-remaining": "3",
        "x-ratelimit-reset": "600",
        "x-ratelimit-policy": "requests/month",
        "ratelimit-policy": '"requests/second";q=10;w=1, "requests/month";q=1000',
        "ratelimit": '"requests/month";r=3;t=600',
    }


def test_over_limit_is_a_429_with_retry_after_and_a_json_body() -> None:
    decision = Decision(
        False,
        DecisionCode.OVER_LIMIT,
        1,
        limits=(_limit("minute", 60, 0, 42),),
        retry_after=timedelta(seconds=41.2),
    )
    outcome = GatewayDecision(Verdict.OVER_LIMIT, "quota or rate limit exceeded", TENANT, decision)
    denied = check_response(outcome, NOW).denied_response
    assert denied.status.code == 429
    headers = _headers(denied.headers)
    assert headers["retry-after"] == "42"
    assert headers["x-ratelimit-remaining"] == "0"
    assert headers["x-ratelimit-reset"] == "42"
    assert json.loads(denied.body)["error"] == "rate_limited"


def test_a_429_names_the_limit_that_refused_and_retry_after_is_a_number() -> None:
    decision = Decision(
        False,
        DecisionCode.OVER_LIMIT,
        1,
        limits=(_limit("second", 10, 0, 1), _limit("month", 1000, 0, 600)),
        retry_after=timedelta(seconds=599.5),
    )
    outcome = GatewayDecision(Verdict.OVER_LIMIT, "quota or rate limit exceeded", TENANT, decision)
    denied = check_response(outcome, NOW).denied_response
    body = json.loads(denied.body)
    assert body["retry_after_seconds"] == 600
    assert body["limit"] == {
        "name": "requests/month",
        "metric": "requests",
        "window": "month",
        "limit": 1000,
        "remaining": 0,
        "reset_seconds": 600,
    }
    headers = _headers(denied.headers)
    assert headers["x-ratelimit-policy"] == "requests/month"
    assert headers["ratelimit"] == '"requests/month";r=0;t=600'
    assert headers["ratelimit-policy"] == '"requests/second";q=10;w=1, "requests/month";q=1000'


@pytest.mark.parametrize(
    ("verdict", "status", "error"),
    [
        (Verdict.UNAUTHENTICATED, 401, "unauthenticated"),
        (Verdict.SUSPENDED, 403, "tenant_suspended"),
        (Verdict.MISCONFIGURED, 403, "route_misconfigured"),
    ],
)
def test_other_denials_have_their_status_and_no_rate_limit_headers(
    verdict: Verdict, status: int, error: str
) -> None:
    response = check_response(GatewayDecision(verdict, "why"), NOW)
    assert response.status.code != 0
    assert response.denied_response.status.code == status
    assert json.loads(response.denied_response.body) == {"error": error, "message": "why"}
    assert "x-ratelimit-limit" not in _headers(response.denied_response.headers)
