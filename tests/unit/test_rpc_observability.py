"""The observability wrapper on a real grpc.aio server (``start_server``) with small scripted
servicers.

The servicers answer what each test asks for (over limit, suspended, an abort ...) so that the
counters, decision labels and spans derived from real RPCs can be checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from quotaplane.telemetry import Telemetry
from quotaplane.transport.grpc.observability import Observability, set_call_tenant
from quotaplane.transport.grpc.server import Servicers, start_server
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc, types_pb2
from tests.unit.test_telemetry import samples, value

pytestmark = pytest.mark.timeout(30)

CHECK_QUOTA = "quotaplane.v1.QuotaService/CheckQuota"
AUTHZ = "envoy.service.auth.v3.Authorization/Check"
R = quota_pb2.CheckQuotaResponse
RPC_TOTAL = "quotaplane_rpc_requests_total"


class ScriptedQuota(quota_pb2_grpc.QuotaServiceServicer):
    """tenant_id "bad" aborts; otherwise the code is read from the request's labels."""

    async def CheckQuota(
        self, request: quota_pb2.CheckQuotaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> quota_pb2.CheckQuotaResponse:
        if request.tenant_id == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad tenant")
        code = R.Code.Value(request.labels.get("code", "OK"))
        limit = types_pb2.LimitStatus(name="requests/month", limit=10, remaining=4)
        return R(
            allowed=code == R.OK,
            code=code,
            replayed=request.labels.get("replayed") == "1",
            limits=[limit],
        )


class ScriptedAuthz(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Answers the google.rpc code named by the x-code header; names tenant t-denied on denial."""

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        code = int(request.attributes.request.http.headers["x-code"])
        if code == 0:
            set_call_tenant("t-allowed")
            tenant = base_pb2.HeaderValue(key="x-tenant-id", value="t-allowed")
            ok = external_auth_pb2.OkHttpResponse(
                headers=[base_pb2.HeaderValueOption(header=tenant)]
            )
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0), ok_response=ok)
        if code != 16:
            set_call_tenant("t-denied")
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code))


@dataclass
class Served:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    quota: quota_pb2_grpc.QuotaServiceStub
    authz: external_auth_pb2_grpc.AuthorizationStub
    admin: admin_pb2_grpc.AdminServiceStub

    def value(self, name: str, **labels: str) -> float | None:
        return value(self.telemetry.scrape(), name, **labels)

    async def settled(self, rpcs: int) -> None:
        """Wait until ``rpcs`` calls were recorded: an abort sends its status to the client
        before the handler (and so the observing wrapper) has finished."""
        for _ in range(200):
            text = self.telemetry.scrape()
            counted = sum(v for (n, _), v in samples(text).items() if n == RPC_TOTAL)
            if counted >= rpcs and len(self.spans.get_finished_spans()) >= rpcs:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{rpcs} RPCs were not recorded within 2 s")

    async def check(self, tenant: str = "t1", metric: str = "", **labels: str) -> None:
        request = quota_pb2.CheckQuotaRequest(tenant_id=tenant, metric=metric, labels=labels)
        await self.quota.CheckQuota(request, timeout=5)

    async def envoy(self, code: int, metric: str = "") -> None:
        http = attribute_context_pb2.AttributeContext.HttpRequest(headers={"x-code": str(code)})
        attributes = attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http),
            context_extensions={"metric": metric} if metric else {},
        )
        await self.authz.Check(external_auth_pb2.CheckRequest(attributes=attributes), timeout=5)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    spans = InMemorySpanExporter()
    telemetry = Telemetry(tenant_labels=10, span_exporter=spans)
    servicers = Servicers(
        quota=ScriptedQuota(),  # type: ignore[abstract]
        admin=admin_pb2_grpc.AdminServiceServicer(),
        authz=ScriptedAuthz(),
    )
    server = await start_server(
        "127.0.0.1:0", servicers, admin_token="t", wrappers=[Observability(telemetry).wrap]
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Served(
                telemetry,
                spans,
                quota_pb2_grpc.QuotaServiceStub(channel),
                external_auth_pb2_grpc.AuthorizationStub(channel),
                admin_pb2_grpc.AdminServiceStub(channel),
            )
    finally:
        await server.stop(0)
        telemetry.shutdown()


async def test_rpcs_are_counted_by_method_and_status_code(served: Served) -> None:
    await served.check()
    await served.check()
    with pytest.raises(grpc.aio.AioRpcError):
        await served.check(tenant="bad")
    await served.settled(3)
    assert served.value("quotaplane_rpc_requests_total", method=CHECK_QUOTA, code="OK") == 2
    assert (
        served.value("quotaplane_rpc_requests_total", method=CHECK_QUOTA, code="INVALID_ARGUMENT")
        == 1
    )


async def test_calls_the_token_check_refuses_are_counted_too(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.admin.ListTenants(admin_pb2.ListTenantsRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await served.settled(1)
    method = "quotaplane.v1.AdminService/ListTenants"
    assert served.value(RPC_TOTAL, method=method, code="UNAUTHENTICATED") == 1


async def test_every_rpc_adds_one_latency_sample(served: Served) -> None:
    for _ in range(3):
        await served.check()
    count = served.value("quotaplane_rpc_duration_seconds_count", method=CHECK_QUOTA, code="OK")
    assert count == 3


async def test_check_quota_decisions_are_counted_by_outcome(served: Served) -> None:
    await served.check()
    await served.check(code="OVER_LIMIT")
    await served.check(code="OVER_LIMIT")
    await served.check(code="SUSPENDED")
    counted = {
        outcome: served.value(
            "quotaplane_quota_decisions_total",
            metric="requests",
            outcome=outcome,
            tenant="t1",
            source="check_quota",
        )
        for outcome in ("ok", "over_limit", "suspended")
    }
    assert counted == {"ok": 1, "over_limit": 2, "suspended": 1}


async def test_a_replayed_decision_is_not_counted_again(served: Served) -> None:
    await served.check(replayed="1")
    assert served.value("quotaplane_rpc_requests_total", method=CHECK_QUOTA, code="OK") == 1
    assert "quotaplane_quota_decisions_total" not in served.telemetry.scrape()


async def test_an_aborted_check_is_not_a_decision(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await served.check(tenant="bad")
    await served.settled(1)
    assert "quotaplane_quota_decisions_total" not in served.telemetry.scrape()


async def test_check_quota_limits_feed_the_quota_used_gauge(served: Served) -> None:
    await served.check()
    used = served.value("quotaplane_quota_used_ratio", tenant="t1", limit="requests/month")
    assert used == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("code", "outcome", "tenant"),
    [
        (0, "ok", "t-allowed"),
        (7, "suspended", "t-denied"),
        (8, "over_limit", "t-denied"),
        (16, "unauthenticated", "unknown"),
    ],
)
async def test_envoy_check_statuses_become_decision_outcomes(
    served: Served, code: int, outcome: str, tenant: str
) -> None:
    await served.envoy(code, metric="rating.bulk")
    labels = {"metric": "rating.bulk", "outcome": outcome, "tenant": tenant, "source": "ext_authz"}
    assert served.value("quotaplane_quota_decisions_total", **labels) == 1


async def test_each_rpc_has_a_server_span_with_method_status_tenant_and_metric(
    served: Served,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await served.check(tenant="bad", metric="rating.bulk")
    await served.settled(1)
    (span,) = served.spans.get_finished_spans()
    assert span.name == CHECK_QUOTA
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "quotaplane.v1.QuotaService",
        "rpc.method": "CheckQuota",
        "rpc.grpc.status_code": grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "quotaplane.tenant_id": "bad",
        "quotaplane.metric": "rating.bulk",
    }


async def test_an_envoy_span_carries_the_tenant_the_servicer_named(served: Served) -> None:
    await served.envoy(8)
    (span,) = served.spans.get_finished_spans()
    assert (span.attributes or {})["quotaplane.tenant_id"] == "t-denied"


async def test_a_span_joins_the_trace_of_the_caller(served: Served) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    request = quota_pb2.CheckQuotaRequest(tenant_id="t1")
    await served.quota.CheckQuota(request, metadata=(("traceparent", traceparent),), timeout=5)
    (span,) = served.spans.get_finished_spans()
    assert format(span.context.trace_id, "032x") == trace_id
