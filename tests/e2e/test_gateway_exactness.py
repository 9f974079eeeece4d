"""Exactness on the fast path: Envoy's HTTP ext_authz over two `serve --workers 2` processes.

200 concurrent clients go through one Envoy whose quotaplane cluster has both servers as
endpoints; each server runs two workers on shared ports, so four replicas decide at once on one
Redis and one Postgres. Costs are mixed (the route table prices /v1/rate/bulk at 10 units):
exactly the quota is admitted, every other answer is 429, and the Redis counter agrees.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import yaml

from quotaplane.domain.windows import Window, window_start
from quotaplane.storage.redis import keys
from quotaplane_client import QuotaplaneClient
from quotaplane_client.v1 import admin_pb2
from tests.harness.gateway import render, run_envoy, start_openclaw
from tests.harness.quotaplane_server import ServeProcess, serve_process

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

CLIENTS = 200
QUOTA = 1000
PER_SECOND = 50
PLANS = f"""
plans:
  exact:
    metrics:
      requests: {{limits: {{month: {QUOTA}}}}}
  persecond:
    metrics:
      requests: {{limits: {{second: {PER_SECOND}, month: 1000000}}}}
"""
COSTS = {"/v1/rate": 1, "/v1/rate/bulk": 10}
RATE = {"type": "domain", "value": "example.com"}
BODIES = {"/v1/rate": json.dumps(RATE), "/v1/rate/bulk": json.dumps({"items": [RATE]})}


@dataclass
class Fleet:
    envoy: int
    admin: QuotaplaneClient
    redis_url: str
    prefix: str

    def key(self, plan: str) -> tuple[str, str]:
        tenant = self.admin.admin_call(
            "CreateTenant", admin_pb2.CreateTenantRequest(name="fleet", plan=plan)
        )
        created = self.admin.admin_call(
            "CreateApiKey", admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="fleet")
        )
        return tenant.id, created.secret

    def counter(self, tenant_id: str, window: Window, start: int) -> int:
        client = redis.Redis.from_url(self.redis_url)
        try:
            key = keys.counter_key(self.prefix, tenant_id, "requests", window.value, start)
            return int(client.get(key) or 0)
        finally:
            client.close()


class Client:
    """One keep-alive connection to Envoy, as one of the concurrent clients."""

    def __init__(self, port: int, key: str) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self._key = key

    def send(self, path: str, key: bool = True) -> int:
        headers = {"x-api-key": self._key} if key else {}
        self._conn.request("POST", path, body=BODIES[path], headers=headers)
        response = self._conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self._conn.close()


def _envoy_config(workdir: Path, serves: list[ServeProcess], upstream: int) -> Path:
    """The shipped config (HTTP path) with every server as an endpoint of its cluster; a long
    ext_authz timeout, as exactness, not latency, is under test."""
    text = render.render(render.TEMPLATE, listen_address="127.0.0.1", listen_port=0,
                         admin_port=0, openclaw_port=upstream, authz="http",
                         quotaplane_http_port=serves[0].http_port, authz_timeout="10s")  # fmt: skip
    config = yaml.safe_load(text)
    cluster = next(
        c for c in config["static_resources"]["clusters"] if c["name"] == "quotaplane_http"
    )
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    endpoints[:] = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": s.http_port}}
            }
        }
        for s in serves
    ]
    path = workdir / "envoy-fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    redis_key_prefix: str,
    migrated_postgres: str,
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    (workdir / "plans.yaml").write_text(PLANS)
    prefix = f"{redis_key_prefix}-fleet"
    env = {"QUOTAPLANE_AUTHZ_ROUTES": render.AUTHZ_ROUTES, "QUOTAPLANE_REDIS_TIMEOUT": "5s",
           "QUOTAPLANE_METRICS_ADDR": "off"}  # fmt: skip
    serves = [
        serve_process(
            workdir,
            redis_url=redis_url,
            database_url=migrated_postgres,
            key_prefix=prefix,
            plans_path=workdir / "plans.yaml",
            env=env,
            name=f"serve-{i}",
            args=("--workers", "2"),
        )
        for i in range(2)
    ]
    with contextlib.ExitStack() as stack:
        for serve in serves:
            stack.enter_context(serve.process)
            serve.process.start()
        for serve in serves:
            serve.process.wait_until(
                lambda s=serve: s.process.log_tail(400).count("quotaplane serving") == 2,  # type: ignore[misc]
                90,
                "both workers serving",
            )
        upstream, upstream_port = start_openclaw(workdir)
        stack.enter_context(upstream)
        envoy, port = run_envoy(
            workdir, "envoy-fleet", _envoy_config(workdir, serves, upstream_port)
        )
        stack.enter_context(envoy)
        admin = stack.enter_context(
            QuotaplaneClient(serves[0].addr, admin_token=serves[0].admin_token)
        )
        yield Fleet(port, admin, redis_url, prefix)


def _clients(fleet: Fleet, key: str) -> list[Client]:
    clients = [Client(fleet.envoy, key) for _ in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:  # open every connection before the count starts
        assert set(pool.map(lambda c: c.send("/v1/rate", key=False), clients)) == {401}
    return clients


def test_exactly_the_quota_is_admitted_with_mixed_costs(fleet: Fleet) -> None:
    tenant_id, key = fleet.key("exact")
    clients = _clients(fleet, key)

    def client_run(client: Client) -> list[tuple[int, int]]:
        answers = []
        for path in ["/v1/rate/bulk", "/v1/rate"] * 3:
            answers.append((COSTS[path], client.send(path)))
        # Singles until one is refused: only an exhausted quota refuses a single unit, so the
        # run ends with nothing left, whatever the interleaving.
        while (status := client.send("/v1/rate")) == 200:
            answers.append((1, status))
        answers.append((1, status))
        return answers

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [a for run in pool.map(client_run, clients) for a in run]
    for client in clients:
        client.close()
    statuses = {status for _, status in answers}
    assert statuses == {200, 429}
    assert sum(cost for cost, status in answers if status == 200) == QUOTA
    month = int(window_start(Window.MONTH, datetime.now(UTC)).timestamp())
    assert fleet.counter(tenant_id, Window.MONTH, month) == QUOTA


def test_a_per_second_limit_is_exact_within_one_second(fleet: Fleet) -> None:
    for _attempt in range(3):
        tenant_id, key = fleet.key("persecond")
        clients = _clients(fleet, key)
        barrier = threading.Barrier(CLIENTS)

        def one(client: Client, barrier: threading.Barrier = barrier) -> int:
            barrier.wait()
            return client.send("/v1/rate")

        time.sleep(1 - time.time() % 1 + 0.01)  # just after a second starts
        second = int(time.time())
        with ThreadPoolExecutor(CLIENTS) as pool:
            statuses = list(pool.map(one, clients))
        ended = int(time.time())
        for client in clients:
            client.close()
        assert set(statuses) <= {200, 429}
        assert fleet.counter(tenant_id, Window.SECOND, second) <= PER_SECOND
        if ended == second:  # every decision fell in one window
            assert statuses.count(200) == PER_SECOND
            assert statuses.count(429) == CLIENTS - PER_SECOND
            assert fleet.counter(tenant_id, Window.SECOND, second) == PER_SECOND
            return
    pytest.fail("no attempt fitted in one second on this machine")
