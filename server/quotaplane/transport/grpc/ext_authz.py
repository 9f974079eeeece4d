"""Envoy ext_authz (envoy.service.auth.v3.Authorization/Check): HTTP request -> gateway verdict.

Decoding: the API key comes from ``x-api-key`` or ``authorization: Bearer``; the metric and cost
from the route's ``context_extensions`` (``metric``, ``cost``; defaults ``requests`` and 1).
Encoding:
- allowed: the upstream gets ``x-tenant-id`` and never the key (``x-api-key`` and
  ``authorization`` are removed); the client gets the rate-limit headers.
- 401 (no/unknown/revoked key), 403 (suspended), 429 (over limit, with ``retry-after``): answered
  by Envoy itself with a JSON body ``{"error": ..., "message": ...}``.
Rate-limit headers describe the most constraining limit (least remaining):
``x-ratelimit-limit``, ``x-ratelimit-remaining``, and ``x-ratelimit-reset`` in seconds until the
window resets (delta seconds, as in the IETF RateLimit header draft).
A storage failure is answered as gRPC UNAVAILABLE so that Envoy's failure mode decides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.gateway import Gateway, GatewayDecision, GatewayRequest, Verdict
from quotaplane.domain.model import DEFAULT_METRIC, Decision, LimitState
from quotaplane.transport.grpc.observability import set_call_tenant
from quotaplane.transport.grpc.status import rpc

KEY_HEADERS = ("x-api-key", "authorization")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_DENIAL = {
    Verdict.UNAUTHENTICATED: (
        http_status_pb2.Unauthorized,
        code_pb2.UNAUTHENTICATED,
        "unauthenticated",
    ),
    Verdict.SUSPENDED: (http_status_pb2.Forbidden, code_pb2.PERMISSION_DENIED, "tenant_suspended"),
    Verdict.OVER_LIMIT: (
        http_status_pb2.TooManyRequests,
        code_pb2.RESOURCE_EXHAUSTED,
        "rate_limited",
    ),
}


def request_headers(request: external_auth_pb2.CheckRequest) -> dict[str, str]:
    """Lower-cased request headers, whichever of Envoy's two encodings was used."""
    http = request.attributes.request.http
    if http.headers:
        return {k.lower(): v for k, v in http.headers.items()}
    return {
        h.key.lower(): h.value or h.raw_value.decode("utf-8", "replace")
        for h in http.header_map.headers
    }


def api_key_of(headers: Mapping[str, str]) -> str | None:
    if key := headers.get("x-api-key", "").strip():
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def gateway_request(request: external_auth_pb2.CheckRequest) -> GatewayRequest:
    extensions = request.attributes.context_extensions
    raw_cost = extensions.get("cost", "1")
    if not raw_cost.isdigit():
        raise InvalidArgument(f"route context_extensions cost={raw_cost!r} is not a whole number")
    return GatewayRequest(
        api_key=api_key_of(request_headers(request)),
        metric=extensions.get("metric", DEFAULT_METRIC),
        cost=int(raw_cost),
    )


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def _seconds_until(at: datetime, now: datetime) -> int:
    return max(0, math.ceil((at - now).total_seconds()))


def rate_limit_headers(
    decision: Decision | None, now: datetime
) -> list[base_pb2.HeaderValueOption]:
    if decision is None or not decision.limits:
        return []
    tightest: LimitState = min(decision.limits, key=lambda s: (s.remaining, s.reset_at))
    headers = [
        _header("x-ratelimit-limit", str(tightest.limit)),
        _header("x-ratelimit-remaining", str(tightest.remaining)),
        _header("x-ratelimit-reset", str(_seconds_until(tightest.reset_at, now))),
    ]
    if decision.retry_after is not None:
        headers.append(_header("retry-after", str(math.ceil(decision.retry_after.total_seconds()))))
    return headers


def check_response(outcome: GatewayDecision, now: datetime) -> external_auth_pb2.CheckResponse:
    limits = rate_limit_headers(outcome.decision, now)
    if outcome.verdict is Verdict.ALLOWED:
        assert outcome.tenant_id is not None
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[_header("x-tenant-id", outcome.tenant_id)],
                headers_to_remove=list(KEY_HEADERS),
                response_headers_to_add=limits,
            ),
        )
    http_code, grpc_code, error = _DENIAL[outcome.verdict]
    body = {"error": error, "message": outcome.reason}
    if outcome.decision is not None and outcome.decision.retry_after is not None:
        body["retry_after_seconds"] = str(math.ceil(outcome.decision.retry_after.total_seconds()))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=grpc_code, message=outcome.reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_code),
            headers=[_header("content-type", "application/json"), *limits],
            body=json.dumps(body, separators=(",", ":")),
        ),
    )


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Answers Envoy's Check for every request to the OpenClaw API."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    @rpc
    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        outcome = await self._gateway.authorize(gateway_request(request))
        if outcome.tenant_id:
            set_call_tenant(outcome.tenant_id)
        return check_response(outcome, datetime.now(UTC))
