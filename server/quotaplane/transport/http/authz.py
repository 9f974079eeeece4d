"""Envoy's HTTP ext_authz (``http_service``): decode -> ``Gateway.authorize`` -> encode.

Envoy sends each check as an HTTP/1.1 request carrying the original method and path (after its
``path_prefix``) and the headers its ``allowed_headers`` lets through; a 200 answer admits the
request, any other status below 500 is the answer the client gets, and a 5xx is an error on
which Envoy's failure mode decides.

Decoding: the key comes from ``x-api-key`` or ``authorization: Bearer`` (the same rule as the
gRPC Check); metric and cost from quotaplane's route table on the path (``domain/quota/routes.py``),
never from a header, so a client cannot choose its own price. ``/v1/usage`` is checked but
unmetered. With JWT identities on, the tenant claim of a token Envoy's jwt_authn verified comes
from ``x-quotaplane-jwt-tenant`` (Envoy sets it from the claim and strips it from client input).

Encoding uses the one rule for a decision as HTTP (``transport/http/gateway.py``) that the gRPC
Check uses too, so both transports give the same statuses, headers and bodies:

- allowed: 200 with ``x-tenant-id`` (for Envoy's ``allowed_upstream_headers``), the rate-limit
  headers (for ``allowed_client_headers_on_success``), and ``x-envoy-auth-headers-to-remove``
  naming the key headers, which Envoy strips from the upstream request whatever its config.
- 401 no or unknown key, 403 suspended or a misconfiguration (a route's metric that the
  tenant's plan lacks), 429 over limit: JSON bodies and the rate-limit headers.
- 503 only when storage failed (``Unavailable``): Envoy's failure mode decides.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from quotaplane.domain.errors import QuotaplaneError, Unavailable
from quotaplane.domain.quota.gateway import Gateway, GatewayDecision, GatewayRequest, Verdict
from quotaplane.domain.quota.routes import UNMETERED_PATHS, RouteTable
from quotaplane.telemetry import Telemetry
from quotaplane.transport.grpc.ext_authz import JWT_TENANT_HEADER, KEY_HEADERS, api_key_of
from quotaplane.transport.http.gateway import DENIALS, denial_body, rate_limit_headers
from quotaplane.transport.http.protocol import Answer, Headers

log = logging.getLogger(__name__)

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
_KEY_HEADERS = frozenset(name.encode() for name in (*KEY_HEADERS, JWT_TENANT_HEADER))
_JSON = (b"content-type", b"application/json")
_REMOVE_KEYS = (HEADERS_TO_REMOVE.encode(), ",".join(KEY_HEADERS).encode())

OnDecision = Callable[[GatewayRequest, GatewayDecision], None]
# Gateway verdicts as the decisions metric names them (the gRPC Check's observer does the same).
_OUTCOMES = {Verdict.ALLOWED: "ok"}


def gateway_request(
    path: str, headers: Iterable[tuple[bytes, bytes]], routes: RouteTable, *, jwt: bool = False
) -> GatewayRequest:
    """The gateway's question for one check: key (or, with ``jwt``, the tenant claim Envoy set
    from a verified token) from the headers, price from the path."""
    keys = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in _KEY_HEADERS
    }
    path = path.partition("?")[0]
    route = routes.lookup(path)
    claim = keys.get(JWT_TENANT_HEADER, "").strip() if jwt else ""
    # No route name: a client's path must not become a log key or a metric label.
    return GatewayRequest(
        api_key=api_key_of(keys),
        metric=route.metric,
        cost=str(route.cost),
        tenant_claim=claim or None,
        metered=path not in UNMETERED_PATHS,
    )


def encode(outcome: GatewayDecision, now: datetime) -> Answer:
    """The decision as Envoy's HTTP ext_authz expects it (see the module docstring)."""
    headers: Headers = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in rate_limit_headers(outcome.decision, now)
    ]
    if outcome.verdict is Verdict.ALLOWED:
        assert outcome.tenant_id is not None
        headers += [(b"x-tenant-id", outcome.tenant_id.encode()), _REMOVE_KEYS]
        return 200, headers, b""
    return DENIALS[outcome.verdict].status, [_JSON, *headers], denial_body(outcome, now)


def error_answer(status: int, error: str, message: str) -> Answer:
    """A JSON answer ``{"error", "message"}`` for what is not a decision."""
    body = {"error": error, "message": message}
    return status, [_JSON], json.dumps(body, separators=(",", ":")).encode()


def decision_recorder(telemetry: Telemetry) -> OnDecision:
    """Every decision in quotaplane_quota_decisions_total, with source ``ext_authz_http``."""

    def record(request: GatewayRequest, outcome: GatewayDecision) -> None:
        if outcome.verdict is Verdict.MISCONFIGURED:
            return  # counted by the gateway itself (quotaplane_gateway_misconfigured), as on gRPC
        name = _OUTCOMES.get(outcome.verdict, outcome.verdict.value)
        tenant = outcome.tenant_id or "unknown"
        telemetry.record_decision(request.metric, name, tenant, "ext_authz_http")

    return record


class HttpAuthz:
    """What Envoy's ``http_service`` asks: one check in, one answer out (``protocol.py``)."""

    def __init__(
        self,
        gateway: Gateway,
        routes: RouteTable,
        on_decision: OnDecision | None = None,
        *,
        jwt: bool = False,
    ) -> None:
        self._gateway = gateway
        self._routes = routes
        self._on_decision = on_decision
        self._jwt = jwt  # trust Envoy's JWT_TENANT_HEADER (QUOTAPLANE_JWT_TENANT_CLAIM is set)

    async def answer(self, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Answer:
        request = gateway_request(path, headers, self._routes, jwt=self._jwt)
        try:
            outcome = await self._gateway.authorize(request)
        except Unavailable as error:
            return error_answer(503, "unavailable", str(error))
        except QuotaplaneError as error:
            # About the route, plan or tenant, never the storage: a decision, so that a
            # fail-open Envoy cannot let an unmetered request through.
            return error_answer(403, "route_misconfigured", str(error))
        except Exception:
            log.exception("HTTP ext_authz check failed", extra={"path": path[:200]})
            return error_answer(500, "internal", "internal error in the quota service")
        if self._on_decision is not None and request.metered:
            self._on_decision(request, outcome)
        return encode(outcome, datetime.now(UTC))
