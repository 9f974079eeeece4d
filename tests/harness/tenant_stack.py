"""A gateway stack for the tenant-facing tests: `quotaplane serve`, the OpenClaw sample and a
real Envoy with the shipped config (optionally its JWT variant), plus the typed admin client.

The background usage flush runs once an hour, so whatever /v1/usage, GetUsage or a draft
invoice reports was flushed by the request itself (each flushes the tenant first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quotaplane_client import QuotaplaneClient
from quotaplane_client.v1 import admin_pb2
from tests.harness.gateway import render, request, start_envoy, start_openclaw
from tests.harness.quotaplane_server import ServeProcess, serve_process

PLAN = "metered"
QUOTA = 40
PLANS = f"""
plans:
  {PLAN}:
    metrics:
      requests:
        charge: {{model: per_unit, unit_price: "0.0026"}}
        limits: {{month: {QUOTA}, day: {QUOTA + 5}}}
"""
RATE = {"type": "domain", "value": "example.com"}
BULK = {"items": [RATE, {"type": "ip", "value": "192.0.2.1"}]}


@dataclass
class Tenant:
    id: str
    key: str


@dataclass
class TenantStack:
    client: QuotaplaneClient
    serve: ServeProcess
    envoy_port: int
    workdir: Path

    def tenant(self, name: str, external_id: str = "") -> Tenant:
        create = admin_pb2.CreateTenantRequest(name=name, plan=PLAN, external_id=external_id)
        tenant = self.client.admin_call("CreateTenant", create)
        key = admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="e2e")
        return Tenant(tenant.id, self.client.admin_call("CreateApiKey", key).secret)

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        return request(self.envoy_port, "GET", path, None, headers)

    def rate(self, headers: dict[str, str], bulk: bool = False) -> tuple[int, dict[str, str]]:
        path, body = ("/v1/rate/bulk", BULK) if bulk else ("/v1/rate", RATE)
        status, answer_headers, _ = request(self.envoy_port, "POST", path, body, headers)
        return status, answer_headers


@contextlib.contextmanager
def tenant_stack(
    workdir: Path,
    *,
    redis_url: str,
    key_prefix: str,
    database: str,
    authz: str,
    env: dict[str, str] | None = None,
    plans: str = PLANS,
    **envoy_values: str | int | bool,
) -> Iterator[TenantStack]:
    (workdir / "plans.yaml").write_text(plans)
    serve = serve_process(
        workdir,
        redis_url=redis_url,
        database_url=database,
        key_prefix=key_prefix,
        plans_path=workdir / "plans.yaml",
        env={
            "QUOTAPLANE_FLUSH_INTERVAL": "1h",
            "QUOTAPLANE_METRICS_ADDR": "off",
            "QUOTAPLANE_AUTHZ_ROUTES": render.AUTHZ_ROUTES,
            **(env or {}),
        },
    )
    authz_port = serve.http_port if authz == "http" else serve.port
    with contextlib.ExitStack() as stack:
        stack.enter_context(serve.process)
        serve.process.start().wait_for_port(serve.port, timeout=60)
        upstream, upstream_port = start_openclaw(workdir)
        stack.enter_context(upstream)
        if authz == "grpc":  # checks on the gRPC port; /v1/usage is still served over HTTP
            envoy_values = {"quotaplane_http_port": serve.http_port, **envoy_values}
        envoy, envoy_port = start_envoy(
            workdir, upstream_port, authz_port, False, authz, **envoy_values
        )
        stack.enter_context(envoy)
        client = stack.enter_context(
            QuotaplaneClient(
                serve.addr,
                admin_token=serve.admin_token,
                service_token=serve.tokens.service,
                billing_token=serve.tokens.billing,
            )
        )
        yield TenantStack(client, serve, envoy_port, workdir)
