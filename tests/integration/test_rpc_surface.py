"""Every method of every service we register answers as the contract says, never UNKNOWN.

The table below is the list of RPCs and what each answers to an empty request: an implemented
RPC validates its input (INVALID_ARGUMENT), a not-yet-built one answers UNIMPLEMENTED naming the
work that brings it. Adding an RPC to a .proto without a handler fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from quotaplane.transport.grpc.admin import AdminServicer
from quotaplane.transport.grpc.ext_authz import AuthorizationServicer
from quotaplane.transport.grpc.quota import QuotaServicer
from quotaplane_client.v1 import admin_pb2, quota_pb2
from tests.harness.tokens import token_channel

ADMIN_TOKEN = "surface-test-token"
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED

# method -> status answered to an empty request
EXPECTED: dict[str, grpc.StatusCode] = {
    "/quotaplane.v1.QuotaService/CheckQuota": INVALID,
    "/quotaplane.v1.QuotaService/RecordUsage": INVALID,
    "/quotaplane.v1.QuotaService/GenerateInvoice": INVALID,
    "/envoy.service.auth.v3.Authorization/Check": OK,  # no key: a 401 denial in the response
    "/quotaplane.v1.AdminService/CreateTenant": INVALID,
    "/quotaplane.v1.AdminService/GetTenant": INVALID,
    "/quotaplane.v1.AdminService/ListTenants": OK,
    "/quotaplane.v1.AdminService/UpdateTenantPlan": INVALID,
    "/quotaplane.v1.AdminService/SuspendTenant": INVALID,
    "/quotaplane.v1.AdminService/ResumeTenant": INVALID,
    "/quotaplane.v1.AdminService/CreateApiKey": INVALID,
    "/quotaplane.v1.AdminService/ListApiKeys": INVALID,
    "/quotaplane.v1.AdminService/RevokeApiKey": INVALID,
    "/quotaplane.v1.AdminService/ListPlans": OK,
    "/quotaplane.v1.AdminService/ReloadPlans": OK,
    "/quotaplane.v1.AdminService/GetUsage": INVALID,
    "/quotaplane.v1.AdminService/ListInvoices": OK,
    "/quotaplane.v1.AdminService/GetInvoice": INVALID,
    "/quotaplane.v1.AdminService/VoidInvoice": INVALID,
    "/quotaplane.v1.AdminService/ApplyPlans": INVALID,
    "/quotaplane.v1.AdminService/ListPlanVersions": OK,
    "/quotaplane.v1.AdminService/RollbackPlans": INVALID,
    "/quotaplane.v1.AdminService/SetTenantOverrides": INVALID,
    "/quotaplane.v1.AdminService/ClearTenantOverrides": INVALID,
    "/quotaplane.v1.AdminService/ListAuditEvents": OK,
}

SERVICES = [
    (quota_pb2.DESCRIPTOR.services_by_name["QuotaService"], QuotaServicer),
    (admin_pb2.DESCRIPTOR.services_by_name["AdminService"], AdminServicer),
    (external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"], AuthorizationServicer),
]


def _all_methods() -> list[str]:
    return [f"/{svc.full_name}/{m.name}" for svc, _ in SERVICES for m in svc.methods]


def test_the_table_lists_every_method_of_every_service() -> None:
    assert sorted(EXPECTED) == sorted(_all_methods())


@pytest.mark.parametrize(("service", "servicer"), SERVICES, ids=lambda x: getattr(x, "name", ""))
def test_every_method_has_our_own_handler(service: object, servicer: type) -> None:
    for method in service.methods:  # type: ignore[attr-defined]
        assert method.name in vars(servicer), f"{servicer.__name__} lacks {method.name}"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings.defaults(
        grpc_addr="127.0.0.1:0",
        authz_http_addr="127.0.0.1:0",
        data_dir=tmp_path / "data",
        admin_token=ADMIN_TOKEN,
    )
    async with Runtime(settings) as running:
        assert running.grpc is not None
        yield running


@pytest.fixture
async def channel(runtime: Runtime) -> AsyncIterator[grpc.aio.Channel]:
    """Presents the token each method needs."""
    assert runtime.grpc is not None
    async with token_channel(f"127.0.0.1:{runtime.grpc.port}", runtime.tokens) as chan:
        yield chan


@pytest.fixture
async def plain_channel(runtime: Runtime) -> AsyncIterator[grpc.aio.Channel]:
    """Presents whatever metadata the test passes, nothing else."""
    assert runtime.grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc.port}") as chan:
        yield chan


def _request_class(method: str) -> type:
    service_name, method_name = method.strip("/").split("/")
    pool = descriptor_pool.Default()
    input_type = pool.FindServiceByName(service_name).FindMethodByName(method_name).input_type
    return message_factory.GetMessageClass(input_type)


@pytest.mark.timeout(60)
async def test_every_method_answers_an_empty_request_as_listed(channel: grpc.aio.Channel) -> None:
    answers = {}
    for method in _all_methods():
        call = channel.unary_unary(
            method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        try:
            await call(_request_class(method)(), timeout=10)
            answers[method] = (OK, "")
        except grpc.aio.AioRpcError as err:
            answers[method] = (err.code(), err.details() or "")
    assert {m: code for m, (code, _) in answers.items()} == EXPECTED
    for method, (code, details) in answers.items():
        if code is UNIMPLEMENTED:
            assert "issue #" in details, f"{method}: {details!r} does not say what brings it"


@pytest.mark.timeout(60)
async def test_health_reports_serving_for_every_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in (
        "",
        "quotaplane.v1.QuotaService",
        "quotaplane.v1.AdminService",
        "envoy.service.auth.v3.Authorization",
    ):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


@pytest.mark.timeout(60)
async def test_admin_calls_without_the_token_are_refused(
    plain_channel: grpc.aio.Channel,
) -> None:
    call = plain_channel.unary_unary(
        "/quotaplane.v1.AdminService/ListPlans",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b,
    )
    for metadata, code in [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer qp_live_abcdef"),), grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(admin_pb2.ListPlansRequest(), metadata=metadata, timeout=5)
        assert caught.value.code() == code
