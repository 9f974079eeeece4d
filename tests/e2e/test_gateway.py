"""The gateway end to end: a real Envoy asks a real `quotaplane serve` about every request.

Client -> Envoy (ext_authz) -> quotaplane (Redis counters, SQLite ledger) -> OpenClaw sample.
Every test runs on both paths: Envoy's HTTP ext_authz (the default) and the gRPC Check.
Tenants and keys are created through AdminService; what the upstream saw comes back in the
OpenClaw sample's `x-seen-*` response headers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from quotaplane.domain.windows import Period
from quotaplane.storage.sql import migrate
from quotaplane_client import QuotaplaneClient
from quotaplane_client.v1 import admin_pb2
from tests.harness.gateway import render, request, start_envoy, start_openclaw
from tests.harness.quotaplane_server import ServeProcess, serve_process

pytestmark = pytest.mark.timeout(120)

QUOTA = 20
PLANS = f"""
plans:
  gateway:
    metrics:
      requests:
        charge: {{model: package, package_size: 1000, package_price: "0.05"}}
        limits: {{month: {QUOTA}}}
  roomy:
    metrics:
      requests: {{limits: {{month: 100000}}}}
"""
RATE = {"type": "domain", "value": "example.com"}
PATHS = ("http", "grpc")


@dataclass
class Gateway:
    serve: ServeProcess
    closed: int  # Envoy listener, fail closed
    open: int  # Envoy listener, fail open
    admin: QuotaplaneClient

    def tenant_with_key(self, plan: str = "gateway") -> tuple[str, str, str]:
        tenant = self.admin.admin_call(
            "CreateTenant", admin_pb2.CreateTenantRequest(name="gw", plan=plan)
        )
        created = self.admin.admin_call(
            "CreateApiKey", admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="e2e")
        )
        return tenant.id, created.key.id, created.secret


def rate(
    port: int, key: str | None, path: str = "/v1/rate", **headers: str
) -> tuple[int, dict[str, str], Any]:
    body = {"items": [RATE]} if path.endswith("bulk") else RATE
    auth = {"x-api-key": key} if key else {}
    return request(port, "POST", path, body, {**auth, **headers})


@contextlib.contextmanager
def gateway(
    workdir: Path, redis_url: str, key_prefix: str, authz: str = "grpc", extra_routes: str = ""
) -> Iterator[Gateway]:
    (workdir / "plans.yaml").write_text(PLANS)
    database = f"sqlite:///{workdir / 'ledger.db'}"
    migrate.upgrade(database)
    serve = serve_process(workdir, redis_url=redis_url, database_url=database,
                          key_prefix=key_prefix, plans_path=workdir / "plans.yaml",
                          env={"QUOTAPLANE_AUTHZ_ROUTES": render.AUTHZ_ROUTES})  # fmt: skip
    authz_port = serve.http_port if authz == "http" else serve.port
    with contextlib.ExitStack() as stack:
        stack.enter_context(serve.process)
        serve.process.start().wait_for_port(serve.port, timeout=60)
        upstream, upstream_port = start_openclaw(workdir)
        stack.enter_context(upstream)
        closed, closed_port = start_envoy(
            workdir, upstream_port, authz_port, False, authz, extra_routes=extra_routes
        )
        stack.enter_context(closed)
        opened, open_port = start_envoy(
            workdir, upstream_port, authz_port, True, authz, extra_routes=extra_routes
        )
        stack.enter_context(opened)
        admin = stack.enter_context(
            QuotaplaneClient(
                serve.addr, admin_token=serve.admin_token, service_token=serve.tokens.service
            )
        )
        yield Gateway(serve, closed_port, open_port, admin)


@pytest.fixture(scope="module", params=PATHS)
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    redis_key_prefix: str,
) -> Iterator[Gateway]:
    authz: str = request.param
    workdir = tmp_path_factory.mktemp(f"gateway-{authz}")
    with gateway(workdir, redis_url, f"{redis_key_prefix}-gw-{authz}", authz) as g:
        yield g


def _eventually(predicate: Any, timeout: float = 3.0) -> float:
    """Seconds until predicate() held; fails after timeout."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - start


def test_allowed_request_reaches_openclaw_as_the_tenant_without_the_key(gw: Gateway) -> None:
    tenant_id, _, key = gw.tenant_with_key()
    status, headers, body = rate(gw.closed, key)
    assert status == 200, body
    assert body["score"] >= 0
    assert headers["x-seen-tenant-id"] == tenant_id
    assert headers["x-seen-api-key"] == "no"
    assert headers["x-ratelimit-limit"] == str(QUOTA)
    assert headers["x-ratelimit-remaining"] == str(QUOTA - 1)


def test_bearer_keys_work_and_are_stripped_too(gw: Gateway) -> None:
    tenant_id, _, key = gw.tenant_with_key()
    status, headers, _ = rate(gw.closed, None, authorization=f"Bearer {key}")
    assert status == 200
    assert headers["x-seen-api-key"] == "no"
    assert headers["x-seen-tenant-id"] == tenant_id


def test_exactly_the_quota_is_admitted_then_429_with_headers(gw: Gateway) -> None:
    _, _, key = gw.tenant_with_key()
    answers = [rate(gw.closed, key) for _ in range(QUOTA + 5)]
    statuses = [status for status, _, _ in answers]
    assert statuses == [200] * QUOTA + [429] * 5
    _, headers, body = answers[-1]
    now = datetime.now(UTC)
    until_reset = (Period.of(now).end - now).total_seconds()
    assert headers["x-ratelimit-limit"] == str(QUOTA)
    assert headers["x-ratelimit-remaining"] == "0"
    assert abs(int(headers["retry-after"]) - until_reset) <= 5
    assert abs(int(headers["x-ratelimit-reset"]) - until_reset) <= 5
    assert body["error"] == "rate_limited"
    assert "x-seen-tenant-id" not in headers  # denied by Envoy, never reached OpenClaw


def test_the_bulk_route_charges_its_cost(gw: Gateway) -> None:
    _, _, key = gw.tenant_with_key(plan="roomy")
    _, first, _ = rate(gw.closed, key)
    _, after_bulk, _ = rate(gw.closed, key, path="/v1/rate/bulk")
    assert int(first["x-ratelimit-remaining"]) - int(after_bulk["x-ratelimit-remaining"]) == 10


@pytest.mark.parametrize("key", [None, "qp_live_not-a-key-we-issued"])
def test_missing_or_unknown_keys_get_401(gw: Gateway, key: str | None) -> None:
    status, headers, body = rate(gw.closed, key)
    assert status == 401
    assert body["error"] == "unauthenticated"
    assert "x-seen-api-key" not in headers


def test_a_revoked_key_is_refused_within_a_second(gw: Gateway) -> None:
    _, key_id, key = gw.tenant_with_key()
    assert rate(gw.closed, key)[0] == 200
    gw.admin.admin_call("RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id=key_id))
    assert _eventually(lambda: rate(gw.closed, key)[0] == 401) <= 1.5


def test_a_suspended_tenant_gets_403_and_200_again_after_resume(gw: Gateway) -> None:
    tenant_id, _, key = gw.tenant_with_key()
    gw.admin.admin_call(
        "SuspendTenant", admin_pb2.SuspendTenantRequest(tenant_id=tenant_id, reason="e2e")
    )
    assert _eventually(lambda: rate(gw.closed, key)[0] == 403) <= 1.5
    assert rate(gw.closed, key)[2]["error"] == "tenant_suspended"
    gw.admin.admin_call("ResumeTenant", admin_pb2.ResumeTenantRequest(tenant_id=tenant_id))
    assert _eventually(lambda: rate(gw.closed, key)[0] == 200) <= 1.5


def test_a_client_cannot_forge_its_tenant(gw: Gateway) -> None:
    tenant_id, _, key = gw.tenant_with_key()
    _, headers, _ = rate(gw.closed, key, **{"x-tenant-id": "someone-else"})
    assert headers["x-seen-tenant-id"] == tenant_id


@pytest.mark.parametrize("authz", PATHS)
def test_quotaplane_down_fails_closed_or_open_as_configured_and_recovers(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, authz: str
) -> None:
    with gateway(tmp_path, redis_url, f"{redis_key_prefix}-gwdown-{authz}", authz) as g:
        _, _, key = g.tenant_with_key(plan="roomy")
        assert rate(g.closed, key)[0] == 200
        g.serve.process.terminate()
        status, _, body = rate(g.closed, key)
        assert status == 503 and body["error"] == "quota service unavailable"
        status, headers, _ = rate(g.open, key)
        assert status == 200
        assert headers["x-seen-auth-failure-mode-allowed"] == "yes"
        assert headers["x-seen-api-key"] == "no"
        g.serve.process.start().wait_for_port(g.serve.port, timeout=60)
        assert _eventually(lambda: rate(g.closed, key)[0] == 200, timeout=10) < 10
