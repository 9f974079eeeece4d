"""The tenant API's own rules, with a stand-in for the use case (no I/O is involved here): the
proxy token, the identity header, the error statuses, shared answers under a flood, and the
site's split between Envoy's checks and what Envoy forwards."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, Unavailable
from quotaplane.transport.http.tenant_api import HttpSite, TenantApi

TOKEN = "proxy-secret"
TENANT = "4b1f6a3e-0000-4000-8000-000000000001"


class SlowUsage:
    """Answers after ``release`` is set; counts the computations."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.release = asyncio.Event()
        self.error = error

    async def usage(self, tenant_id: str, period: str | None = None) -> Any:
        self.calls.append((tenant_id, period))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return object()


def api(service: SlowUsage) -> TenantApi:
    return TenantApi(service, proxy_token=TOKEN, portal={})  # type: ignore[arg-type]


def headers(token: str = TOKEN, tenant: str = TENANT) -> list[tuple[bytes, bytes]]:
    return [(b"x-quotaplane-proxy-token", token.encode()), (b"x-tenant-id", tenant.encode())]


async def test_without_the_proxy_token_nothing_is_computed() -> None:
    service = SlowUsage()
    for given in (headers(token="wrong"), [(b"x-tenant-id", TENANT.encode())]):
        status, _, body = await api(service).answer("/v1/usage", "", given)
        assert (status, json.loads(body)["error"]) == (403, "not_through_gateway")
    assert service.calls == []


async def test_without_the_tenant_header_it_is_401() -> None:
    status, _, body = await api(SlowUsage()).answer("/v1/usage", "", headers(tenant=""))
    assert (status, json.loads(body)["error"]) == (401, "unauthenticated")


async def test_errors_are_answered_by_kind() -> None:
    for error, status in [
        (InvalidArgument("bad period"), 400),
        (FailedPrecondition("did not exist"), 404),
        (Unavailable("ledger down"), 503),
        (RuntimeError("bug"), 500),
    ]:
        service = SlowUsage(error)
        service.release.set()
        answer = await api(service).answer("/v1/usage", "period=2026-11", headers())
        assert answer[0] == status, error
        assert service.calls == [(TENANT, "2026-11")]


async def test_concurrent_calls_of_one_tenant_share_one_computation() -> None:
    service = SlowUsage(InvalidArgument("shared"))
    tenant_api = api(service)
    calls = [asyncio.create_task(tenant_api.answer("/v1/usage", "", headers())) for _ in range(20)]
    other = asyncio.create_task(tenant_api.answer("/v1/usage", "period=2026-11", headers()))
    await asyncio.sleep(0.01)
    service.release.set()
    answers = await asyncio.gather(*calls, other)
    assert {status for status, _, _ in answers} == {400}
    assert service.calls == [(TENANT, None), (TENANT, "2026-11")]
    await tenant_api.answer("/v1/usage", "", headers())  # the next one computes again
    assert len(service.calls) == 3


async def test_the_site_sends_checks_to_the_authz_and_the_rest_to_the_tenant_api() -> None:
    seen: list[str] = []

    async def authz(path: str, _: Any) -> Any:
        seen.append(path)
        return 200, [], b""

    service = SlowUsage()
    site = HttpSite(authz, TenantApi(service, proxy_token=TOKEN, portal={"/portal": (b"t", b"p")}))  # type: ignore[arg-type]
    await site.answer("/v1/usage?period=2026-11", [])  # Envoy's check of /v1/usage
    await site.answer("/v1/rate", [])
    assert seen == ["/v1/usage", "/v1/rate"] and service.calls == []
    status, page_headers, body = await site.answer("/_tenant/portal", [])
    assert (status, page_headers[0], body) == (200, (b"content-type", b"t"), b"p")
    assert (await site.answer("/_tenant/nothing", []))[0] == 404
