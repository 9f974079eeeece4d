"""ListAuditEvents: the audit trail, oldest first, filtered by method, tenant and time range.

Paging is keyset paging on the event id with a token bound to the listing and its filters
(``domain/paging.py``), like every other admin listing. What is recorded, and when, is the
transport's business (``transport/grpc/audit.py``: every mutating AdminService call).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from quotaplane.domain.audit.ports import AuditEvent, AuditFilter, AuditStore
from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.paging import Cursor, decode_page_token, parse_page_size
from quotaplane.domain.tenants.model import parse_tenant_id

_LISTING = "audit_events"
_METHOD_RE = re.compile(r"[A-Za-z0-9_.]{1,100}(/[A-Za-z0-9_]{1,100})?")


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_page_token: str


class AuditLog:
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    async def list(
        self,
        *,
        method: str = "",
        tenant_id: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> AuditPage:
        size = parse_page_size(page_size)
        filters = AuditFilter(
            method=_method(method),
            tenant_id=parse_tenant_id(tenant_id) if tenant_id else None,
            start=start,
            end=end,
        )
        if start and end and end <= start:
            raise InvalidArgument("end must be after start")
        fields = filters.as_token_fields()
        after = decode_page_token(page_token, fields, listing=_LISTING)
        after_id = _event_id(after.id) if after else None
        rows = await self._store.list_page(filters=filters, after_id=after_id, size=size + 1)
        page, token = rows[:size], ""
        if len(rows) > size:
            last = page[-1]
            token = Cursor(last.occurred_at, str(last.id), fields, listing=_LISTING).encode()
        return AuditPage(events=page, next_page_token=token)


def _method(method: str) -> str | None:
    method = method.removeprefix("/")  # the gRPC path form, "/pkg.Service/Method"
    if not method:
        return None
    if not _METHOD_RE.fullmatch(method):
        raise InvalidArgument(
            "method must be a method name (CreateTenant) or a full one "
            "(quotaplane.v1.AdminService/CreateTenant)"
        )
    return method


def _event_id(text: str) -> int:
    if not text.isdigit():
        raise InvalidArgument("page_token is not a token returned by this listing")
    return int(text)
