"""The HTTP ext_authz behind an Envoy config quotaplane did not write.

The config below is what an operator writes from Envoy's documentation alone: an
``http_service`` to quotaplane's address that lets ``x-api-key`` through (Envoy always forwards
``authorization``), the upstream headers and client headers an authz server usually names, and
nothing else: no route strips the key, no context_extensions, no header quotaplane invented.
Route costs come from QUOTAPLANE_AUTHZ_ROUTES. A private valkey counts Redis calls exactly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from quotaplane.storage.sql import migrate
from quotaplane_client import QuotaplaneClient
from quotaplane_client.v1 import admin_pb2
from tests.harness.gateway import request, run_envoy, start_openclaw
from tests.harness.quotaplane_server import ServeProcess, serve_process
from tests.harness.redis_servers import PrivateRedis

pytestmark = pytest.mark.timeout(120)

QUOTA = 12
PLANS = f"""
plans:
  plain:
    metrics:
      requests: {{limits: {{month: {QUOTA}}}}}
  bigger:
    metrics:
      requests: {{limits: {{month: {QUOTA * 10}}}}}
"""
ROUTES = "/v1/rate/bulk=requests:5,/v1/export/*=exports:1"
# The usage flush also runs scripts (EVALSHA); an hour's interval keeps it out of the count.
SERVE_ENV = {"QUOTAPLANE_AUTHZ_ROUTES": ROUTES, "QUOTAPLANE_FLUSH_INTERVAL": "1h"}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
PLAIN_ENVOY = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}.HttpConnectionManager
          stat_prefix: plain
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              failure_mode_allow: {fail_open}
              allowed_headers:
                patterns: [{{exact: x-api-key}}, {{exact: authorization}}]
              http_service:
                server_uri: {{uri: "http://authz", cluster: authz, timeout: 1s}}
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{{exact: x-tenant-id}}]
                  allowed_client_headers_on_success:
                    patterns: [{{prefix: x-ratelimit-}}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: authz
    load_assignment:
      cluster_name: authz
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {authz}}}}}}}
  - name: upstream
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""


@dataclass
class Plain:
    serve: ServeProcess
    envoy: int  # fail closed
    envoy_open: int  # the same config with failure_mode_allow: true
    admin: QuotaplaneClient
    redis_url: str

    def key(self) -> tuple[str, str]:
        tenant = self.admin.admin_call(
            "CreateTenant", admin_pb2.CreateTenantRequest(name="plain", plan="plain")
        )
        created = self.admin.admin_call(
            "CreateApiKey", admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="plain")
        )
        return tenant.id, created.secret

    def evalsha_calls(self) -> int:
        client = redis.Redis.from_url(self.redis_url)
        try:
            stats: dict[str, Any] = client.info("commandstats")
            return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
        finally:
            client.close()


def rate(port: int, key: str | None, path: str = "/v1/rate", **headers: str) -> Any:
    auth = {"x-api-key": key} if key else {}
    return request(port, "POST", path, {"type": "domain", "value": "example.com"},
                   {**auth, **headers})  # fmt: skip


def _envoy(workdir: Path, name: str, authz: int, upstream: int, fail_open: bool) -> Any:
    config = workdir / f"{name}.yaml"
    text = PLAIN_ENVOY.format(
        hcm=HCM, authz=authz, upstream=upstream, fail_open=str(fail_open).lower()
    )
    config.write_text(text)
    return run_envoy(workdir, name, config)


@contextlib.contextmanager
def plain_gateway(workdir: Path, redis_url: str) -> Iterator[Plain]:
    (workdir / "plans.yaml").write_text(PLANS)
    database = f"sqlite:///{workdir / 'ledger.db'}"
    migrate.upgrade(database)
    serve = serve_process(workdir, redis_url=redis_url, database_url=database,
                          plans_path=workdir / "plans.yaml",
                          env=SERVE_ENV)  # fmt: skip
    with contextlib.ExitStack() as stack:
        stack.enter_context(serve.process)
        serve.process.start().wait_for_port(serve.http_port, timeout=60)
        upstream, upstream_port = start_openclaw(workdir)
        stack.enter_context(upstream)
        closed, closed_port = _envoy(workdir, "plain", serve.http_port, upstream_port, False)
        stack.enter_context(closed)
        opened, open_port = _envoy(workdir, "plain-open", serve.http_port, upstream_port, True)
        stack.enter_context(opened)
        admin = stack.enter_context(QuotaplaneClient(serve.addr, admin_token=serve.admin_token))
        yield Plain(serve, closed_port, open_port, admin, redis_url)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plain]:
    workdir = tmp_path_factory.mktemp("plain")
    with PrivateRedis(workdir / "redis") as private, plain_gateway(workdir, private.url) as p:
        yield p


def test_allowed_request_reaches_the_upstream_as_the_tenant_without_the_key(plain: Plain) -> None:
    tenant_id, key = plain.key()
    status, headers, body = rate(plain.envoy, key)
    assert status == 200, body
    assert headers["x-seen-api-key"] == "no"  # stripped by x-envoy-auth-headers-to-remove
    assert headers["x-seen-tenant-id"] == tenant_id
    assert headers["x-ratelimit-limit"] == str(QUOTA)
    assert headers["x-ratelimit-remaining"] == str(QUOTA - 1)


def test_a_bearer_key_works_and_is_stripped(plain: Plain) -> None:
    tenant_id, key = plain.key()
    status, headers, _ = rate(plain.envoy, None, authorization=f"Bearer {key}")
    assert status == 200
    assert headers["x-seen-api-key"] == "no"
    assert headers["x-seen-tenant-id"] == tenant_id


@pytest.mark.parametrize("key", [None, "qp_live_not-a-key-we-issued"])
def test_no_or_unknown_key_is_401_with_a_json_body(plain: Plain, key: str | None) -> None:
    status, headers, body = rate(plain.envoy, key)
    assert status == 401
    assert body["error"] == "unauthenticated"
    assert "x-seen-api-key" not in headers


def test_route_costs_come_from_the_route_table_not_the_client(plain: Plain) -> None:
    _, key = plain.key()
    _, first, _ = rate(plain.envoy, key)
    _, bulk, _ = rate(plain.envoy, key, path="/v1/rate/bulk?cost=1", **{"x-cost": "1"})
    assert int(first["x-ratelimit-remaining"]) - int(bulk["x-ratelimit-remaining"]) == 5


def test_a_route_metric_missing_from_the_plan_is_a_403_denial(plain: Plain) -> None:
    _, key = plain.key()
    status, _, body = rate(plain.envoy_open, key, path="/v1/export/all")
    assert status == 403  # a decision: even a fail-open Envoy does not let it through
    assert body["error"] == "route_misconfigured"
    assert "exports" in body["message"]


def test_the_quota_is_exact_then_429_with_headers(plain: Plain) -> None:
    _, key = plain.key()
    statuses = [rate(plain.envoy, key)[0] for _ in range(QUOTA + 3)]
    assert statuses == [200] * QUOTA + [429] * 3
    status, headers, body = rate(plain.envoy, key)
    assert status == 429
    assert body["error"] == "rate_limited"
    assert headers["x-ratelimit-remaining"] == "0"
    assert int(headers["retry-after"]) > 0


def test_an_exhausted_tenant_is_denied_without_redis_calls(plain: Plain) -> None:
    _, key = plain.key()
    for _ in range(QUOTA):
        assert rate(plain.envoy, key)[0] == 200
    assert rate(plain.envoy, key)[0] == 429  # the store's denial, remembered
    before = plain.evalsha_calls()
    answers = [rate(plain.envoy, key) for _ in range(200)]
    assert plain.evalsha_calls() == before
    assert {status for status, _, _ in answers} == {429}
    assert answers[-1][1]["x-ratelimit-remaining"] == "0"


def test_a_raised_quota_takes_effect_within_a_second(plain: Plain) -> None:
    tenant_id, key = plain.key()
    for _ in range(QUOTA):
        rate(plain.envoy, key)
    assert rate(plain.envoy, key)[0] == 429  # remembered as exhausted from here on
    request = admin_pb2.UpdateTenantPlanRequest(tenant_id=tenant_id, plan="bigger")
    plain.admin.admin_call("UpdateTenantPlan", request)
    start = time.monotonic()
    while rate(plain.envoy, key)[0] != 200:
        assert time.monotonic() - start < 1.5, "the raised quota did not apply within 1 s"
        time.sleep(0.02)


def test_storage_failure_is_an_error_that_envoys_failure_mode_decides(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis") as private, plain_gateway(tmp_path, private.url) as p:
        _, key = p.key()
        assert rate(p.envoy, key)[0] == 200
        private.kill()
        status, _, body = request(p.serve.http_port, "GET", "/v1/rate", None, {"x-api-key": key})
        assert status == 503 and body["error"] == "unavailable"
        assert rate(p.envoy, key)[0] == 403  # Envoy's own answer to an authz error
        status, headers, _ = rate(p.envoy_open, key)
        assert status == 200  # fail open: unmetered, and the upstream knows no tenant
        assert "x-seen-tenant-id" not in headers
