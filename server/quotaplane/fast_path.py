"""Composition of the gateway's fast path: Envoy's HTTP ext_authz, started for ``Runtime``.

Kept beside the composition root (``app.py``) rather than in it, so the root stays small: this
wires the transport (``transport/http``) to the Gateway use case, telemetry and shutdown.
"""

from __future__ import annotations

import contextlib

from quotaplane.config import Settings
from quotaplane.domain.gateway import Gateway
from quotaplane.shutdown import push_bounded
from quotaplane.telemetry import Telemetry
from quotaplane.transport.http.authz import HttpAuthz, decision_recorder
from quotaplane.transport.http.server import RunningHttp, start_http


async def start_http_authz(
    stack: contextlib.AsyncExitStack, settings: Settings, gateway: Gateway, telemetry: Telemetry
) -> RunningHttp | None:
    """Serve Envoy's HTTP ext_authz unless QUOTAPLANE_AUTHZ_HTTP_ADDR is off; stopped by
    ``stack`` (pushed after the gRPC server: drained first)."""
    if settings.authz_http_addr == "off":
        return None
    app = HttpAuthz(gateway, settings.authz_routes, on_decision=decision_recorder(telemetry))
    http = await start_http(settings.authz_http_addr, app.answer, reuse_port=settings.reuse_port)
    grace = settings.shutdown_grace.total_seconds()
    push_bounded(stack, "http ext_authz", http.stop, grace, limit=grace + 5)
    return http
