"""The audit trail's recorder: every mutating AdminService call, as it was asked and answered.

``AuditTrail.wrap`` wraps each method handler when the server registers it, inside the token
check (so the credential is known and calls refused for a missing token, which change nothing,
do not flood the ledger). Which methods mutate is decided by name, so a mutation added later
is audited without more code: every AdminService method except ``Get*`` and ``List*``, and
GenerateInvoice when it finalizes, forces or pushes (the admin-only variants).

The record is written after the call and before its answer, so an operator who sees the answer
finds it in ``ListAuditEvents``. The request is stored as JSON with secrets redacted (any field
named like a secret, token or password) and long texts (a plans document) summarised by size
and digest. A failed write is logged and does not fail the call, which has already happened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from quotaplane.domain.audit.ports import AuditStore, NewAuditEvent
from quotaplane.domain.errors import QuotaplaneError
from quotaplane.transport.grpc.auth import (
    ADMIN_ONLY,
    ADMIN_SERVICE,
    QUOTA_SERVICE,
    current_credential,
    invoice_roles,
)
from quotaplane.transport.grpc.handlers import Behavior, with_behavior

log = logging.getLogger(__name__)

READ_PREFIXES = ("Get", "List")
GENERATE_INVOICE = f"{QUOTA_SERVICE}/GenerateInvoice"
SECRET_WORDS = ("secret", "token", "password")
REDACTED = "[redacted]"
MAX_TEXT = 2000  # longer strings are stored as their size and digest
_UUID_RE = re.compile(r"[0-9a-fA-F-]{36}")


def is_mutation(method: str) -> bool:
    """Whether calls of ``method`` ("pkg.Service/Method") may be audited (see module doc)."""
    service, _, name = method.partition("/")
    if service == ADMIN_SERVICE:
        return not name.startswith(READ_PREFIXES)
    return method == GENERATE_INVOICE


def audited(method: str, request: Any) -> bool:
    """Whether this call is audited: GenerateInvoice only in its admin variants."""
    return method != GENERATE_INVOICE or invoice_roles(request) == ADMIN_ONLY


def redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: REDACTED if any(w in key.lower() for w in SECRET_WORDS) else redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redacted(item) for item in value]
    if isinstance(value, str) and len(value) > MAX_TEXT:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"<{len(value)} characters, sha256 {digest}...>"
    return value


def request_json(request: Any) -> str:
    if not isinstance(request, Message):
        return "{}"  # a request that did not decode
    body = MessageToDict(request, preserving_proto_field_name=True)
    return json.dumps(redacted(body), sort_keys=True, separators=(",", ":"))


def tenant_of(request: Any, response: Any) -> str | None:
    """The tenant a call concerned: the request's tenant_id, else the answer's tenant."""
    for message in (request, response):
        value = getattr(message, "tenant_id", "") if isinstance(message, Message) else ""
        if value:
            return str(value) if _UUID_RE.fullmatch(str(value)) else None
    if isinstance(response, Message) and response.DESCRIPTOR.full_name == "quotaplane.v1.Tenant":
        return str(getattr(response, "id", "")) or None
    return None


class AuditTrail:
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if not is_mutation(method) or handler.unary_unary is None:
            return handler
        return with_behavior(handler, self._audited(handler.unary_unary, method))

    def _audited(self, behavior: Behavior, method: str) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if not audited(method, request):
                return await behavior(request, context)
            try:
                response = await behavior(request, context)
            except grpc.aio.AbortError:
                code = context.code()
                name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                await self._record(method, request, None, name, str(context.details() or ""))
                raise
            await self._record(method, request, response, "OK", "")
            return response

        return call

    async def _record(
        self, method: str, request: Any, response: Any, result: str, message: str
    ) -> None:
        event = NewAuditEvent(
            credential=current_credential(),
            method=method,
            tenant_id=tenant_of(request, response),
            request=request_json(request),
            result=result,
            message=message,
        )
        try:
            await self._store.record(event)
        except QuotaplaneError as error:
            log.error("audit event not recorded (%s %s): %s", method, result, error.message)
