"""What Envoy forwards to quotaplane's HTTP port after a check allowed it: the tenant's own API.

Envoy routes ``GET /v1/usage`` (ext_authz on: the key or JWT is checked, no unit consumed) and
``/portal`` (static, no credential) to this port, rewriting the path under ``TENANT_PREFIX``
so that they never look like Envoy's checks, which arrive with the client's own path.

Who the caller is comes only from ``x-tenant-id``, the header quotaplane's own check answer
set (Envoy's ``allowed_upstream_headers``); Envoy removes any client-sent ``x-tenant-id``
before routing (``early_header_mutation_extensions`` in envoy/envoy.yaml), so a client cannot
name another tenant. The route also adds ``x-quotaplane-proxy-token`` (the service token), and
this API refuses a request without it, so the port answers nothing useful to a process that
reaches it around Envoy.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import urllib.parse
from collections.abc import Iterable
from importlib import resources

from quotaplane.domain.billing.self_service import SelfService, TenantUsage
from quotaplane.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QuotaplaneError,
    Unavailable,
)
from quotaplane.domain.quota.routes import USAGE_PATH
from quotaplane.transport.http.authz import error_answer
from quotaplane.transport.http.protocol import Answer, Answerer, Headers
from quotaplane.transport.http.usage_json import encode_usage

log = logging.getLogger(__name__)

TENANT_PREFIX = "/_tenant"
PORTAL_PATH = "/portal"
TENANT_HEADER = b"x-tenant-id"
PROXY_TOKEN_HEADER = "x-quotaplane-proxy-token"
_NO_STORE = (b"cache-control", b"no-store")
# The portal loads only its own files and calls only /v1/usage.
_PAGE_HEADERS: Headers = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
     b"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]  # fmt: skip
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}
# Errors of the use case as HTTP (nothing here is about storage but Unavailable).
_STATUS = [
    (InvalidArgument, 400, "invalid_argument"),
    (NotFound, 404, "not_found"),
    (FailedPrecondition, 404, "not_found"),
    (Unavailable, 503, "unavailable"),
]


def load_portal() -> dict[str, tuple[bytes, bytes]]:
    """The portal's files, read once at start: URL path -> (content type, bytes)."""
    files: dict[str, tuple[bytes, bytes]] = {}
    root = resources.files("quotaplane.transport.http") / "portal"
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[f"{PORTAL_PATH}/{entry.name}"] = (_TYPES[suffix], entry.read_bytes())
    index = files[f"{PORTAL_PATH}/index.html"]
    files[PORTAL_PATH] = files[f"{PORTAL_PATH}/"] = index
    return files


class TenantApi:
    """``/v1/usage`` and ``/portal`` (paths as seen after ``TENANT_PREFIX``)."""

    def __init__(
        self,
        service: SelfService,
        *,
        proxy_token: str,
        portal: dict[str, tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._service = service
        self._proxy_token = proxy_token.encode()
        self._portal = load_portal() if portal is None else portal
        # /v1/usage costs no quota, so one tenant's flood must not multiply ledger work: calls
        # for one (tenant, period) while one is being answered share its answer.
        self._in_flight: dict[tuple[str, str], asyncio.Future[TenantUsage]] = {}

    async def answer(self, path: str, query: str, headers: Iterable[tuple[bytes, bytes]]) -> Answer:
        if path == USAGE_PATH:
            return await self._usage(query, dict(headers))
        if (found := self._portal.get(path)) is not None:
            content_type, body = found
            return 200, [(b"content-type", content_type), *_PAGE_HEADERS], body
        return error_answer(404, "not_found", "no such page")

    async def _usage(self, query: str, headers: dict[bytes, bytes]) -> Answer:
        token = headers.get(PROXY_TOKEN_HEADER.encode(), b"")
        if self._proxy_token and not hmac.compare_digest(token, self._proxy_token):
            return error_answer(403, "not_through_gateway", "call /v1/usage through the gateway")
        tenant_id = headers.get(TENANT_HEADER, b"").decode("latin-1")
        if not tenant_id:
            return error_answer(401, "unauthenticated", "missing API key")
        period = urllib.parse.parse_qs(query).get("period", [""])[-1]
        try:
            usage = await self._shared_usage(tenant_id, period)
        except QuotaplaneError as error:
            status, name = next(
                ((code, name) for kind, code, name in _STATUS if isinstance(error, kind)),
                (400, "invalid_argument"),
            )
            return error_answer(status, name, error.message)
        except Exception:
            log.exception("GET /v1/usage failed")
            return error_answer(500, "internal", "internal error in the quota service")
        return 200, [(b"content-type", b"application/json"), _NO_STORE], encode_usage(usage)

    async def _shared_usage(self, tenant_id: str, period: str) -> TenantUsage:
        key = (tenant_id, period)
        if (pending := self._in_flight.get(key)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[TenantUsage] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            usage = await self._service.usage(tenant_id, period or None)
        except BaseException as error:
            if isinstance(error, Exception):
                future.set_exception(error)
                future.exception()  # retrieved: a lone caller leaves no warning behind
            else:
                future.cancel()
            raise
        finally:
            self._in_flight.pop(key, None)
        future.set_result(usage)
        return usage


class HttpSite:
    """Every request on the HTTP port: under ``TENANT_PREFIX`` the tenant API, else a check."""

    def __init__(self, authz: Answerer, tenant: TenantApi | None) -> None:
        self._authz = authz
        self._tenant = tenant

    async def answer(self, target: str, headers: Headers) -> Answer:
        path, _, query = target.partition("?")
        if self._tenant is not None and path.startswith(TENANT_PREFIX):
            return await self._tenant.answer(path[len(TENANT_PREFIX) :], query, headers)
        return await self._authz(path, headers)
