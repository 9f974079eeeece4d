"""Envoy's HTTP ext_authz (``http_service``): decode -> ``Gateway.authorize`` -> encode.

Envoy sends each check as an HTTP/1.1 request carrying the original method and path (after its
``path_prefix``) and the headers its ``allowed_headers`` lets through; a 200 answer admits the
request, any other status below 500 is the answer the client gets, and a 5xx is an error on
which Envoy's failure mode decides.

Decoding: the key comes from ``x-api-key`` or ``authorization: Bearer`` (the same rule as the
gRPC Check); metric and cost from quotaplane's route table on the path (``domain/routes.py``),
never from a header, so a client cannot choose its own price.

Encoding reuses the gRPC Check's answer (``check_response``) so both transports give the same
statuses, headers and bodies:

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
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2

from quotaplane.domain.errors import QuotaplaneError, Unavailable
from quotaplane.domain.quota.gateway import Gateway, GatewayDecision, GatewayRequest
from quotaplane.domain.quota.routes import RouteTable
from quotaplane.transport.grpc.ext_authz import KEY_HEADERS, api_key_of, check_response

log = logging.getLogger(__name__)

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
_KEY_HEADERS = frozenset(name.encode() for name in KEY_HEADERS)
_JSON = (b"content-type", b"application/json")

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]
OnDecision = Callable[[GatewayRequest, GatewayDecision], None]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def gateway_request(
    path: str, headers: Iterable[tuple[bytes, bytes]], routes: RouteTable
) -> GatewayRequest:
    """The gateway's question for one check: key from the headers, price from the path."""
    keys = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in _KEY_HEADERS
    }
    route = routes.lookup(path)
    # No route name: a client's path must not become a log key or a metric label.
    return GatewayRequest(api_key=api_key_of(keys), metric=route.metric, cost=str(route.cost))


def _pairs(options: Iterable[Any]) -> Headers:
    return [(o.header.key.encode("latin-1"), o.header.value.encode("latin-1")) for o in options]


def encode(response: external_auth_pb2.CheckResponse) -> Answer:
    """The gRPC Check's answer as Envoy's HTTP ext_authz expects it."""
    if response.HasField("ok_response"):
        ok = response.ok_response
        headers = _pairs(ok.headers) + _pairs(ok.response_headers_to_add)
        if ok.headers_to_remove:
            headers.append((HEADERS_TO_REMOVE.encode(), ",".join(ok.headers_to_remove).encode()))
        return 200, headers, b""
    denied = response.denied_response
    return denied.status.code, _pairs(denied.headers), denied.body.encode()


def error_answer(status: int, error: str, message: str) -> Answer:
    body = json.dumps({"error": error, "message": message}, separators=(",", ":")).encode()
    return status, [_JSON], body


class HttpAuthz:
    """The ASGI application Envoy's ``http_service`` talks to (served by uvicorn)."""

    def __init__(
        self, gateway: Gateway, routes: RouteTable, on_decision: OnDecision | None = None
    ) -> None:
        self._gateway = gateway
        self._routes = routes
        self._on_decision = on_decision

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else is served
        status, headers, body = await self.answer(scope["path"], scope["headers"])
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Answer:
        request = gateway_request(path, headers, self._routes)
        try:
            outcome = await self._gateway.authorize(request)
        except Unavailable as error:
            return error_answer(503, "unavailable", str(error))
        except QuotaplaneError as error:
            # About the route, plan or tenant, never the storage: a decision, so that a
            # fail-open Envoy cannot let an unmetered request through.
            return error_answer(403, "misconfigured", str(error))
        except Exception:
            log.exception("HTTP ext_authz check failed", extra={"path": path[:200]})
            return error_answer(500, "internal", "internal error in the quota service")
        if self._on_decision is not None:
            self._on_decision(request, outcome)
        return encode(check_response(outcome, datetime.now(UTC)))
