"""The typed clients: deadlines, retries on UNAVAILABLE only where a repeat is safe, tokens.

The server here is a real gRPC server (threaded) that we program per test: it fails the first
N calls with a status, records the metadata and requests it saw, then answers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from quotaplane_client import AsyncQuotaplaneClient, QuotaplaneClient, RetryPolicy, usage_event
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc, types_pb2

pytestmark = pytest.mark.timeout(30)
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)
TENANT = "6f1c7a1e-0000-4000-8000-000000000001"


@dataclass
class Script:
    failures: int = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    calls: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, name: str, request: Any, context: grpc.ServicerContext, reply: Any) -> Any:
        with self.lock:
            self.calls.append((name, request, dict(context.invocation_metadata())))
            if self.failures > 0:
                self.failures -= 1
                context.abort(self.code, "scripted failure")
        return reply


class Quota(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def CheckQuota(self, request: Any, context: grpc.ServicerContext) -> Any:
        reply = quota_pb2.CheckQuotaResponse(allowed=True, code=quota_pb2.CheckQuotaResponse.OK)
        return self.script.answer("CheckQuota", request, context, reply)

    def RecordUsage(self, request: Any, context: grpc.ServicerContext) -> Any:
        reply = quota_pb2.RecordUsageResponse(accepted=len(request.events))
        return self.script.answer("RecordUsage", request, context, reply)


class Admin(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def GetTenant(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.script.answer(
            "GetTenant", request, context, types_pb2.Tenant(id=request.tenant_id)
        )

    def CreateTenant(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.script.answer(
            "CreateTenant", request, context, types_pb2.Tenant(name=request.name)
        )


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    quota_pb2_grpc.add_QuotaServiceServicer_to_server(Quota(script), grpc_server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(Admin(script), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield f"127.0.0.1:{port}", script
    finally:
        grpc_server.stop(0)


def test_a_check_without_request_id_is_not_retried(server: tuple[str, Script]) -> None:
    target, script = server
    script.failures = 1
    with QuotaplaneClient(target, retry=FAST) as client, pytest.raises(grpc.RpcError) as caught:
        client.check_quota(TENANT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert len(script.calls) == 1


def test_a_check_with_request_id_is_retried_with_the_same_id(server: tuple[str, Script]) -> None:
    target, script = server
    script.failures = 2
    with QuotaplaneClient(target, retry=FAST, auto_request_id=True) as client:
        assert client.check_quota(TENANT, cost=2).allowed
    ids = {request.request_id for _, request, _ in script.calls}
    assert len(script.calls) == 3
    assert len(ids) == 1 and ids != {""}


def test_retries_stop_after_the_policy_attempts(server: tuple[str, Script]) -> None:
    target, script = server
    script.failures = 10
    with QuotaplaneClient(target, retry=FAST) as client, pytest.raises(grpc.RpcError):
        client.record_usage([usage_event("e1", TENANT, 5)])
    assert len(script.calls) == FAST.attempts


def test_other_errors_are_not_retried(server: tuple[str, Script]) -> None:
    target, script = server
    script.failures, script.code = 1, grpc.StatusCode.INVALID_ARGUMENT
    with QuotaplaneClient(target, retry=FAST) as client, pytest.raises(grpc.RpcError) as caught:
        client.record_usage([usage_event("e1", TENANT, 5)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert len(script.calls) == 1


def test_admin_calls_carry_the_admin_token_and_writes_are_not_retried(
    server: tuple[str, Script],
) -> None:
    target, script = server
    with QuotaplaneClient(target, admin_token="adm", service_token="svc", retry=FAST) as client:
        client.admin_call("GetTenant", admin_pb2.GetTenantRequest(tenant_id=TENANT))
        client.check_quota(TENANT)
        script.failures = 1
        with pytest.raises(grpc.RpcError):
            client.admin_call("CreateTenant", admin_pb2.CreateTenantRequest(name="x", plan="p"))
    tokens = [(name, meta.get("authorization")) for name, _, meta in script.calls]
    assert tokens == [
        ("GetTenant", "Bearer adm"),
        ("CheckQuota", "Bearer svc"),
        ("CreateTenant", "Bearer adm"),
    ]


async def test_the_async_client_retries_the_same_way(server: tuple[str, Script]) -> None:
    target, script = server
    script.failures = 2
    async with AsyncQuotaplaneClient(target, retry=FAST) as client:
        reply = await client.record_usage([usage_event("e1", TENANT, 5, timestamp=1_800_000_000)])
    assert reply.accepted == 1
    assert len(script.calls) == 3
    assert script.calls[0][1].events[0].timestamp.seconds == 1_800_000_000


async def test_the_deadline_bounds_a_call_to_an_unreachable_server() -> None:
    async with AsyncQuotaplaneClient("127.0.0.1:9", timeout=0.2, retry=FAST) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.check_quota(TENANT)
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
