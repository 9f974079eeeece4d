"""CheckQuota over gRPC when Redis stops, hangs or restarts: fast UNAVAILABLE, then recovery.

The server is a real ``Runtime`` (gRPC, SQLite tenants) on a throwaway valkey that the tests
stop, freeze (SIGSTOP) and restart; quotaplane itself is never restarted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import quota_pb2, quota_pb2_grpc
from tests.harness.redis_servers import PrivateRedis
from tests.harness.tokens import token_channel

pytestmark = pytest.mark.timeout(90)

TIMEOUT = timedelta(milliseconds=100)
MARGIN_S = 0.15  # scheduling and gRPC overhead on a loaded 2-core machine
PLANS = "plans:\n  big:\n    metrics:\n      requests: {limits: {month: 1000000}}\n"


@dataclass
class Served:
    stub: quota_pb2_grpc.QuotaServiceStub
    tenant_id: str
    redis: PrivateRedis

    async def check(self) -> quota_pb2.CheckQuotaResponse:
        request = quota_pb2.CheckQuotaRequest(tenant_id=self.tenant_id, cost=1)
        return await self.stub.CheckQuota(request, timeout=5)

    async def timed_failure(self) -> tuple[grpc.StatusCode, float]:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.check()
        return caught.value.code(), time.monotonic() - started


@pytest.fixture
async def served(tmp_path: Path, private_redis: PrivateRedis) -> AsyncIterator[Served]:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS)
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, database_url)
    settings = Settings.defaults(
        grpc_addr="127.0.0.1:0",
        authz_http_addr="127.0.0.1:0",
        redis_url=private_redis.url,
        database_url=database_url,
        plans_path=plans,
        admin_token="faults-token",
        redis_timeout=TIMEOUT,
        data_dir=tmp_path / "data",
    )
    async with Runtime(settings) as runtime:
        assert runtime.grpc is not None and runtime.tenants is not None
        tenant = await runtime.tenants.create(name="faults", plan="big")
        async with token_channel(f"127.0.0.1:{runtime.grpc.port}", runtime.tokens) as channel:
            yield Served(quota_pb2_grpc.QuotaServiceStub(channel), tenant.id, private_redis)


async def test_redis_stopped_answers_unavailable_within_the_timeout(served: Served) -> None:
    assert (await served.check()).allowed
    served.redis.stop()
    code, elapsed = await served.timed_failure()
    assert code is grpc.StatusCode.UNAVAILABLE
    assert elapsed < TIMEOUT.total_seconds() + MARGIN_S


async def test_decisions_resume_after_redis_restarts_without_restarting_quotaplane(
    served: Served,
) -> None:
    assert (await served.check()).allowed
    served.redis.stop()
    await served.timed_failure()
    served.redis.start()  # empty script cache: the first call also exercises NOSCRIPT
    reply = await served.check()
    assert reply.allowed and reply.limits[0].remaining == 1_000_000 - 2


async def test_a_hung_redis_answers_unavailable_within_the_timeout(served: Served) -> None:
    assert (await served.check()).allowed
    pid = served.redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        code, elapsed = await served.timed_failure()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert code is grpc.StatusCode.UNAVAILABLE
    assert elapsed < TIMEOUT.total_seconds() + MARGIN_S
    await asyncio.sleep(0.1)
    assert (await served.check()).allowed


async def test_stopping_redis_under_load_fails_calls_fast_and_never_hangs(served: Served) -> None:
    async def caller() -> list[float]:
        slowest = []
        for _ in range(30):
            started = time.monotonic()
            try:
                await served.check()
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.UNAVAILABLE
            slowest.append(time.monotonic() - started)
            await asyncio.sleep(0.005)
        return slowest

    load = asyncio.gather(*(caller() for _ in range(20)))
    await asyncio.sleep(0.05)
    served.redis.stop()
    durations = [d for per_caller in await load for d in per_caller]
    assert max(durations) < TIMEOUT.total_seconds() + 2 * MARGIN_S
    served.redis.start()
    assert (await served.check()).allowed
