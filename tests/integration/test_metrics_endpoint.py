"""The real server's /metrics endpoint moves with real gRPC calls.

Runtime on the run's Redis and a migrated SQLite ledger, metrics on a free port; a tenant on the
packaged "starter" plan makes CheckQuota calls and the scraped counters follow.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import quota_pb2, quota_pb2_grpc
from tests.harness.tokens import token_channel
from tests.unit.test_telemetry import value

pytestmark = pytest.mark.timeout(60)

CHECK_QUOTA = "quotaplane.v1.QuotaService/CheckQuota"


@dataclass
class Server:
    runtime: Runtime
    quota: quota_pb2_grpc.QuotaServiceStub

    async def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.runtime.metrics_port}/metrics"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        return await asyncio.to_thread(get)

    async def tenant(self) -> str:
        assert self.runtime.tenants is not None
        return (await self.runtime.tenants.create(name="metrics", plan="starter")).id


@pytest.fixture
async def server(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, sqlite_url: str
) -> AsyncIterator[Server]:
    await asyncio.to_thread(migrate.upgrade, sqlite_url)
    settings = Settings.defaults(
        grpc_addr="127.0.0.1:0",
        authz_http_addr="127.0.0.1:0",
        metrics_addr="127.0.0.1:0",
        metrics_tenant_labels=5,
        redis_url=redis_url,
        redis_key_prefix=redis_key_prefix,
        database_url=sqlite_url,
        data_dir=tmp_path / "data",
        admin_token="metrics-test-token",
    )
    async with Runtime(settings) as runtime:
        assert runtime.grpc is not None and runtime.metrics_port
        async with token_channel(f"127.0.0.1:{runtime.grpc.port}", runtime.tokens) as channel:
            yield Server(runtime, quota_pb2_grpc.QuotaServiceStub(channel))


async def test_rpc_count_moves_by_the_number_of_calls(server: Server) -> None:
    tenant = await server.tenant()
    before = value(
        await server.scrape(), "quotaplane_rpc_requests_total", method=CHECK_QUOTA, code="OK"
    )
    for _ in range(3):
        await server.quota.CheckQuota(quota_pb2.CheckQuotaRequest(tenant_id=tenant), timeout=5)
    after = value(
        await server.scrape(), "quotaplane_rpc_requests_total", method=CHECK_QUOTA, code="OK"
    )
    assert (after or 0) - (before or 0) == 3


async def test_decisions_of_a_tenant_are_counted_under_its_own_label(server: Server) -> None:
    tenant = await server.tenant()
    for _ in range(4):
        await server.quota.CheckQuota(quota_pb2.CheckQuotaRequest(tenant_id=tenant), timeout=5)
    labels = {"metric": "requests", "outcome": "ok", "tenant": tenant, "source": "check_quota"}
    assert value(await server.scrape(), "quotaplane_quota_decisions_total", **labels) == 4


async def test_the_quota_used_gauge_follows_the_monthly_limit(server: Server) -> None:
    tenant = await server.tenant()
    request = quota_pb2.CheckQuotaRequest(tenant_id=tenant, cost=2500)
    await server.quota.CheckQuota(request, timeout=5)
    used = value(
        await server.scrape(), "quotaplane_quota_used_ratio", tenant=tenant, limit="requests/month"
    )
    assert used == pytest.approx(0.25)  # starter: 10,000 requests a month


async def test_an_invalid_call_is_counted_under_its_status_code(server: Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await server.quota.CheckQuota(quota_pb2.CheckQuotaRequest(), timeout=5)
    for _ in range(100):  # an abort reaches the client before the handler has returned
        text = await server.scrape()
        labels = {"method": CHECK_QUOTA, "code": "INVALID_ARGUMENT"}
        if value(text, "quotaplane_rpc_requests_total", **labels):
            break
        await asyncio.sleep(0.02)
    assert value(text, "quotaplane_rpc_requests_total", **labels) == 1
