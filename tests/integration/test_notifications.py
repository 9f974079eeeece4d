"""Quota threshold webhooks through the real server: signed, once per threshold, retried.

A local HTTP receiver records what it gets (and can be told to fail); two Runtimes share one
Redis and one ledger database, as two replicas do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from quotaplane.domain.quota.alerts import QuotaAlert
from quotaplane.integrations.notify.webhooks import SIGNATURE_HEADER, verify
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.notifications import SqlNotificationStore
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane_client.v1 import quota_pb2, quota_pb2_grpc
from tests.harness.tokens import token_channel

pytestmark = pytest.mark.timeout(90)
SECRET = "webhook-secret"
PLANS = "plans:\n  small:\n    metrics:\n      requests: {limits: {month: 10}}\n"


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    failing = receiver.fail_next > 0
                    receiver.fail_next -= failing
                    if not failing and verify(body, self.headers[SIGNATURE_HEADER], SECRET):
                        receiver.bodies.append(json.loads(body))
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    async def wait_for(self, count: int, within: float = 20) -> list[dict[str, Any]]:
        # Async: the servers under test run on this event loop and must keep running.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while len(self.bodies) < count:  # noqa: ASYNC110 - filled by the HTTP thread
                    await asyncio.sleep(0.05)
        return list(self.bodies)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_postgres_database: Callable[[], str]
) -> str:
    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}"
        if request.param == "sqlite"
        else fresh_postgres_database()
    )
    migrate.upgrade(url)
    return url


@pytest.fixture
async def replicas(
    tmp_path: Path, ledger_url: str, redis_url: str, redis_key_prefix: str, receiver: Receiver
) -> AsyncIterator[tuple[list[quota_pb2_grpc.QuotaServiceStub], str]]:
    (tmp_path / "plans.yaml").write_text(PLANS)
    prefix = f"{redis_key_prefix}-notify-{tmp_path.name[-12:]}"
    async with AsyncExitStack() as stack:
        stubs = []
        for i in range(2):
            settings = Settings.defaults(
                grpc_addr="127.0.0.1:0", authz_http_addr="127.0.0.1:0",
                redis_url=redis_url, database_url=ledger_url,
                redis_key_prefix=prefix, admin_token="t", metrics_addr="off",
                data_dir=tmp_path / f"data{i}", plans_path=tmp_path / "plans.yaml",
                webhook_url=receiver.url, webhook_secret=SECRET, redis_timeout=timedelta(seconds=2),
            )  # fmt: skip
            runtime = await stack.enter_async_context(Runtime(settings))
            assert runtime.grpc is not None
            channel = await stack.enter_async_context(
                token_channel(f"127.0.0.1:{runtime.grpc.port}", runtime.tokens)
            )
            stubs.append(quota_pb2_grpc.QuotaServiceStub(channel))
        tenants = SqlTenantStore(create_async_engine_for(ledger_url))
        tenant = await tenants.create(name="notify", plan="small")
        yield stubs, tenant.id


async def _spend(stubs: list[quota_pb2_grpc.QuotaServiceStub], tenant_id: str, calls: int) -> int:
    allowed = 0
    for i in range(calls):
        reply = await stubs[i % 2].CheckQuota(
            quota_pb2.CheckQuotaRequest(tenant_id=tenant_id), timeout=5
        )
        allowed += reply.allowed
    return allowed


async def test_two_replicas_notify_each_threshold_once_with_a_valid_signature(
    replicas: tuple[list[quota_pb2_grpc.QuotaServiceStub], str], receiver: Receiver
) -> None:
    stubs, tenant_id = replicas
    assert await _spend(stubs, tenant_id, 14) == 10
    bodies = await receiver.wait_for(2)
    await asyncio.sleep(1.5)  # a duplicate would arrive within a poll interval
    assert sorted(b["threshold_percent"] for b in receiver.bodies) == [80, 100]
    assert {b["tenant_id"] for b in bodies} == {tenant_id}
    assert {(b["used"], b["quota"]) for b in bodies} == {(8, 10), (10, 10)}


async def test_a_failing_receiver_gets_the_notification_on_a_retry(
    replicas: tuple[list[quota_pb2_grpc.QuotaServiceStub], str], receiver: Receiver
) -> None:
    stubs, tenant_id = replicas
    receiver.fail_next = 2
    await _spend(stubs, tenant_id, 8)
    bodies = await receiver.wait_for(1, within=30)
    assert [b["threshold_percent"] for b in bodies] == [80]


async def test_the_store_records_once_and_leases_a_row_to_one_claimer(ledger_url: str) -> None:
    engine = create_async_engine_for(ledger_url)
    try:
        tenant = await SqlTenantStore(engine).create(name="lease", plan="starter")
        store = SqlNotificationStore(engine)
        now = datetime.now(UTC)
        alert = QuotaAlert(tenant.id, "2026-11", "requests", 80, 8, 10, now)
        assert await store.record("n-1", alert)
        assert not await store.record("n-2", alert)
        first = await store.claim_due(now, timedelta(seconds=30), 10)
        second = await store.claim_due(now, timedelta(seconds=30), 10)
        assert [p.id for p in first] == ["n-1"] and second == []
        await store.failed("n-1", "boom", now - timedelta(seconds=1))
        retried = await store.claim_due(now, timedelta(seconds=30), 10)
        assert [(p.id, p.attempts) for p in retried] == [("n-1", 1)]
        await store.delivered("n-1", now)
        assert await store.claim_due(now + timedelta(hours=1), timedelta(seconds=30), 10) == []
    finally:
        await engine.dispose()
