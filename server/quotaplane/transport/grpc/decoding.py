"""What a caller sent, before any handler sees it: undecodable bytes and unstorable strings are
INVALID_ARGUMENT for every method, never UNKNOWN (grpc answers a request that fails to
deserialize with UNKNOWN before any handler runs) and never a database error.

``decode_guard`` wraps each unary method's handler at registration (see server.py):

- its deserializer catches ``DecodeError`` and hands on an ``Undecodable`` naming the first
  string field that is not valid UTF-8 (protobuf's own message does not say which);
- every string of the decoded request (nested messages and maps included) is checked with the
  domain's ``text_problem`` (no NUL, at most MAX_TEXT characters) before the handler runs.

Exempt from the string check: Envoy's Check (its header maps are the HTTP request as sent and
the gateway stores none of it), and RecordUsage's events, which the domain judges one by one
so that one bad event is rejected alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from quotaplane.domain.text import text_problem

_UNCHECKED_SERVICES = frozenset({"envoy.service.auth.v3.Authorization"})
# Checked by their use cases, with their own limits: events one by one, documents up to 1 MiB.
_UNCHECKED_FIELDS = frozenset(
    {
        ("quotaplane.v1.RecordUsageRequest", "events"),
        ("quotaplane.v1.ApplyPlansRequest", "document"),
        ("quotaplane.v1.SetTenantOverridesRequest", "document"),
    }
)
_LENGTH_DELIMITED = 2
_SKIP_BYTES = {1: 8, 5: 4}  # fixed64, fixed32


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes did not parse; ``problem`` says why."""

    problem: str


def decode_guard(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with a tolerant deserializer and the string check in front of it."""
    if handler.unary_unary is None or handler.request_deserializer is None:
        return handler
    service, _, name = method.partition("/")
    found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    request_type: Descriptor = found.input_type
    check = service not in _UNCHECKED_SERVICES
    behavior = handler.unary_unary

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        problem = (
            request.problem if isinstance(request, Undecodable) else check and strings(request)
        )
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        guarded,
        request_deserializer=_tolerant(handler.request_deserializer, request_type),
        response_serializer=handler.response_serializer,
    )


def _tolerant(
    deserializer: Callable[[bytes], Any], request_type: Descriptor
) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return Undecodable(_why(request_type, data))

    return decode


def _why(request_type: Descriptor, data: bytes) -> str:
    field = bad_utf8_field(request_type, data)
    if field:
        return f"request field {field!r} is not valid UTF-8"
    return f"the request is not a valid {request_type.full_name} message"


def strings(message: Message) -> str | None:
    """The first problem with a string of ``message`` (see ``text_problem``), else None."""
    for name, value in _texts(message, ""):
        if problem := text_problem(value, name):
            return problem
    return None


def _texts(message: Message, prefix: str) -> Iterator[tuple[str, str]]:
    full_name = message.DESCRIPTOR.full_name
    for field, value in message.ListFields():
        if (full_name, field.name) in _UNCHECKED_FIELDS:
            continue
        name = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                yield f"{name} key", str(key)
                yield from _values(field.message_type.fields_by_name["value"], item, name)
        elif field.is_repeated:
            for item in value:
                yield from _values(field, item, name)
        else:
            yield from _values(field, value, name)


def _values(field: FieldDescriptor, value: Any, name: str) -> Iterator[tuple[str, str]]:
    if field.type == FieldDescriptor.TYPE_STRING:
        yield name, value
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        yield from _texts(value, name + ".")


def bad_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """The dotted name of the first string field in the wire bytes that is not valid UTF-8."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            field = descriptor.fields_by_number.get(key >> 3)
            name = prefix + (field.name if field is not None else str(key >> 3))
            if key & 7 != _LENGTH_DELIMITED:
                pos = _varint(data, pos)[1] if key & 7 == 0 else pos + _SKIP_BYTES[key & 7]
                continue
            length, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + length], pos + length
            if found := _bad_chunk(field, chunk, name):
                return found
    except (IndexError, KeyError):
        return None  # not a UTF-8 problem: the generic message says the rest
    return None


def _bad_chunk(field: FieldDescriptor | None, chunk: bytes, name: str) -> str | None:
    if field is None:
        return None
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            return name
    elif field.message_type is not None:
        return bad_utf8_field(field.message_type, chunk, name + ".")
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


__all__ = ["Undecodable", "bad_utf8_field", "decode_guard", "strings"]
