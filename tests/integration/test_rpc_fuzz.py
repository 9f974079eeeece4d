"""Hostile input to every unary method of every service the server lists through reflection.

Each call starts from a plausible request (real ids, a known plan) and breaks one field:
invalid UTF-8, a NUL byte, a 1 MB string, a bad UUID, negative and huge numbers, an unknown enum
value, out-of-range timestamps, a reversed time range, a huge page size, a page token of
another listing. Whatever arrives, the server answers with a caller's-mistake status (never
UNKNOWN or INTERNAL, nor UNAVAILABLE, which would tell the caller to retry), its message is
short, it stays up, and not one database row changes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from quotaplane.domain.windows import Period
from quotaplane.storage.sql.engine import create_sync_engine_for
from quotaplane.storage.sql.tables import metadata
from quotaplane.transport.grpc.auth import NEEDED, Role
from quotaplane_client import QuotaplaneClient
from quotaplane_client.v1 import admin_pb2, quota_pb2
from tests.harness.quotaplane_server import ServeProcess, start_serve

pytestmark = pytest.mark.timeout(300)

PLANS = """
plans:
  basic:
    metrics:
      requests: {limits: {month: 1000}}
"""
REFUSED = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
MAX_DETAILS = 600
MEGABYTE = "x" * 1_000_000
BAD_UTF8 = b"\xff\xfe\xc3\x28"  # replaces a same-length placeholder in the serialized request
PLACEHOLDER = "~~~~"
HUGE_SECONDS = 2**62
FREE_FORM_IDS = {"external_id", "event_id", "request_id"}  # caller-chosen, not UUIDs
INT_LIMITS = {
    FieldDescriptor.TYPE_INT32: (-1, -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-1, -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-1, -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-1, -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (2**32 - 1,),
    FieldDescriptor.TYPE_UINT64: (2**64 - 1,),
}


@dataclass
class Stack:
    serve: ServeProcess
    client: QuotaplaneClient
    database_url: str
    valid: dict[str, str]  # field name -> a value that passes validation
    tokens: dict[str, str]  # listing method -> a next_page_token it issued


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    redis_key_prefix: str,
    migrated_postgres: str,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("fuzz")
    (workdir / "plans.yaml").write_text(PLANS)
    serve = start_serve(
        workdir,
        redis_url=redis_url,
        database_url=migrated_postgres,
        key_prefix=f"{redis_key_prefix}-fuzz",
        plans_path=workdir / "plans.yaml",
    )
    with serve.process, QuotaplaneClient(serve.addr, admin_token=serve.admin_token) as client:
        yield _seeded(serve, client, migrated_postgres)


def _seeded(serve: ServeProcess, client: QuotaplaneClient, database_url: str) -> Stack:
    period = str(Period.of(datetime.now(UTC)))
    tenants = [
        client.admin_call("CreateTenant", admin_pb2.CreateTenantRequest(name=f"t{i}", plan="basic"))
        for i in range(2)
    ]
    key = client.admin_call(
        "CreateApiKey", admin_pb2.CreateApiKeyRequest(tenant_id=tenants[0].id, name="k")
    ).key
    invoices = [client.generate_invoice(t.id, period) for t in tenants]
    tokens = {
        "ListTenants": client.admin_call(
            "ListTenants", admin_pb2.ListTenantsRequest(page_size=1)
        ).next_page_token,
        "ListInvoices": client.admin_call(
            "ListInvoices", admin_pb2.ListInvoicesRequest(page_size=1)
        ).next_page_token,
    }
    assert all(tokens.values())
    valid = {
        "tenant_id": tenants[0].id,
        "key_id": key.id,
        "invoice_id": invoices[0].id,
        "plan": "basic",
        "name": "fuzz",
        "metric": "requests",
        "period": period,
        "event_id": "fuzz-event",
    }
    return Stack(serve, client, database_url, valid, tokens)


def _methods(stack: Stack) -> list[MethodDescriptor]:
    """Every unary method of every service the server lists, described by its reflection."""
    with grpc.insecure_channel(stack.serve.addr) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        return [
            method
            for name in database.get_services()
            if not name.startswith("grpc.reflection.")
            for method in pool.FindServiceByName(name).methods
            if not (method.client_streaming or method.server_streaming)
        ]


def _base(descriptor: Descriptor, valid: dict[str, str]) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING and field.name in valid:
            if not field.is_repeated:
                setattr(message, field.name, valid[field.name])
        elif _is_repeated_message(field):
            _base_into(getattr(message, field.name).add(), valid)
    return message


def _base_into(message: Message, valid: dict[str, str]) -> None:
    message.CopyFrom(_base(message.DESCRIPTOR, valid))


def _is_repeated_message(field: FieldDescriptor) -> bool:
    return (
        field.is_repeated
        and field.message_type is not None
        and not field.message_type.GetOptions().map_entry
    )


def _string_mutations(name: str, listing: str, stack: Stack) -> Iterator[tuple[str, object]]:
    yield "invalid utf-8", PLACEHOLDER
    yield "NUL", "a\x00b"
    yield "1 MB", MEGABYTE
    if name.endswith("_id") and name not in FREE_FORM_IDS:
        yield "bad UUID", "not-a-uuid-\N{SNOWMAN}"
    if name == "page_token":
        foreign = [t for method, t in stack.tokens.items() if method != listing]
        yield "foreign page token", foreign[0]


def _mutations(method: MethodDescriptor, stack: Stack) -> Iterator[tuple[str, bytes]]:
    """(what was broken, serialized request) for each hostile variant of the method's request."""
    for path, field in _fields(method.input_type):
        for what, value in _field_mutations(field, method.name, stack):
            request = _base(method.input_type, stack.valid)
            _set(request, path, field, value)
            data = request.SerializeToString().replace(PLACEHOLDER.encode(), BAD_UTF8)
            yield f"{'.'.join(path)}: {what}", data
    if {"start", "end"} <= set(method.input_type.fields_by_name):
        request = _base(method.input_type, stack.valid)
        now = int(time.time())
        request.start.seconds, request.end.seconds = now, now - 86_400
        yield "reversed range", request.SerializeToString()


def _fields(descriptor: Descriptor) -> Iterator[tuple[list[str], FieldDescriptor]]:
    """Each field to break, with its path; one level into repeated messages (the events)."""
    for field in descriptor.fields:
        if _is_repeated_message(field):
            for inner_path, inner in _fields(field.message_type):
                yield [field.name, *inner_path], inner
        else:
            yield [field.name], field


def _field_mutations(field: FieldDescriptor, listing: str, stack: Stack) -> Iterator[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        yield "map key NUL", {"a\x00": "v"}
        yield "map key invalid utf-8", {PLACEHOLDER: "v"}
        yield "map value 1 MB", {"k": MEGABYTE}
    elif field.message_type is not None and field.message_type.full_name.endswith("Timestamp"):
        yield "far future", HUGE_SECONDS
        yield "far past", -HUGE_SECONDS
    elif field.type == FieldDescriptor.TYPE_STRING:
        yield from _string_mutations(field.name, listing, stack)
    elif field.type == FieldDescriptor.TYPE_ENUM:
        yield "unknown enum value", 999
    elif field.type in INT_LIMITS:
        for number in INT_LIMITS[field.type]:
            yield f"number {number}", number


def _set(request: Message, path: list[str], field: FieldDescriptor, value: object) -> None:
    target = request
    for name in path[:-1]:
        target = getattr(target, name)[0]
    if isinstance(value, dict):
        getattr(target, path[-1]).update(value)
    elif field.message_type is not None:  # a Timestamp
        getattr(target, path[-1]).seconds = value
    elif field.is_repeated:
        getattr(target, path[-1]).append(value)
    else:
        setattr(target, path[-1], value)


def _snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table but the audit trail, which records refused mutations by design."""
    engine = create_sync_engine_for(database_url)
    try:
        with engine.connect() as conn:
            return {
                table.name: sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
                for table in metadata.sorted_tables
                if table.name != "audit_events"
            }
    finally:
        engine.dispose()


def _call(stack: Stack, method: MethodDescriptor, data: bytes) -> tuple[grpc.StatusCode, str]:
    path = f"/{method.containing_service.full_name}/{method.name}"
    with grpc.insecure_channel(stack.serve.addr) as channel:
        call = channel.unary_unary(path)  # raw bytes in and out
        try:
            call(data, metadata=_credentials(stack, path), timeout=20)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _credentials(stack: Stack, path: str) -> tuple[tuple[str, str], ...]:
    """The token the method's role needs (auth.NEEDED), so the fuzz reaches the decoding."""
    method = path.lstrip("/")
    needed = NEEDED.get(method) or NEEDED.get(method.partition("/")[0])
    roles = needed(None) if needed else frozenset()
    token = stack.serve.tokens.service if Role.SERVICE in roles else stack.serve.admin_token
    return (("authorization", f"Bearer {token}"),)


def _names_field(what: str, details: str) -> bool:
    """An undecodable string is refused naming its field ("events.event_id", "labels.key")."""
    path, _, mutation = what.partition(": ")
    if mutation == "invalid utf-8":
        return repr(path) in details
    return mutation != "map key invalid utf-8" or repr(f"{path}.key") in details


def test_hostile_input_to_every_method_is_refused_cleanly_and_stores_nothing(
    stack: Stack,
) -> None:
    methods = _methods(stack)
    assert len(methods) >= 20, [m.full_name for m in methods]
    before = _snapshot(stack.database_url)
    bad: list[str] = []
    calls = 0
    for method in methods:
        for what, data in _mutations(method, stack):
            code, details = _call(stack, method, data)
            calls += 1
            if code in REFUSED or len(details) > MAX_DETAILS or not _names_field(what, details):
                bad.append(f"{method.full_name} [{what}] -> {code.name}: {details[:200]}")
    assert not bad, f"{len(bad)} of {calls} calls:\n" + "\n".join(bad)
    assert stack.serve.process.is_running()
    assert stack.client.admin_call("ListPlans", admin_pb2.ListPlansRequest()).plans
    assert _snapshot(stack.database_url) == before
    assert _refusals_audited(stack.database_url)


def _refusals_audited(database_url: str) -> bool:
    """The refused mutations are in the audit trail, each with its error code."""
    engine = create_sync_engine_for(database_url)
    try:
        with engine.connect() as conn:
            table = metadata.tables["audit_events"]
            results = {row.result for row in conn.execute(sa.select(table.c.result))}
    finally:
        engine.dispose()
    return "INVALID_ARGUMENT" in results


@pytest.mark.parametrize("listing", ["ListTenants", "ListInvoices"])
def test_a_page_token_of_another_listing_is_invalid(stack: Stack, listing: str) -> None:
    foreign = next(token for method, token in stack.tokens.items() if method != listing)
    request = getattr(admin_pb2, f"{listing}Request")(page_token=foreign)
    with pytest.raises(grpc.RpcError) as caught:
        stack.client.admin_call(listing, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another listing" in (caught.value.details() or "")


def test_one_bad_event_in_record_usage_is_rejected_alone(stack: Stack) -> None:
    tenant = stack.valid["tenant_id"]
    events = [
        quota_pb2.UsageEvent(event_id=event_id, tenant_id=tenant, quantity=1)
        for event_id in ("good-1", "bad\x00event", "good-2")
    ]
    response = stack.client.record_usage(events)
    assert (response.accepted, response.rejected) == (2, 1)
    rejected = [r for r in response.results if r.reason]
    assert len(rejected) == 1 and "NUL" in rejected[0].reason


def test_a_huge_unknown_plan_name_is_quoted_by_a_short_prefix(stack: Stack) -> None:
    request = admin_pb2.UpdateTenantPlanRequest(tenant_id=stack.valid["tenant_id"], plan="p" * 4000)
    with pytest.raises(grpc.RpcError) as caught:
        stack.client.admin_call("UpdateTenantPlan", request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details() or "") < 300
