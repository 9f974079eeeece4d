"""SQL audit trail: ``audit_events``, appended by the gRPC audit wrapper, listed by
ListAuditEvents in id order (the order the mutations finished in)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.audit.ports import AuditEvent, AuditFilter, NewAuditEvent
from quotaplane.storage.sql.access import SqlStore, utc_now
from quotaplane.storage.sql.tables import audit_events

_MESSAGE_CHARS = 1000


class SqlAuditStore(SqlStore):
    """AuditStore on Postgres or SQLite."""

    _what = "audit ledger"

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def record(self, event: NewAuditEvent) -> AuditEvent:
        row: dict[str, Any] = {
            "occurred_at": self._clock(),
            "credential": event.credential[:64],
            "method": event.method[:128],
            "tenant_id": event.tenant_id,
            "request": event.request,
            "result": event.result[:32],
            "message": event.message[:_MESSAGE_CHARS],
        }
        async with self._transaction() as conn:
            result = await conn.execute(audit_events.insert().values(**row))
            (event_id,) = result.inserted_primary_key or (0,)
        return _event({**row, "id": event_id})

    async def list_page(
        self, *, filters: AuditFilter, after_id: int | None, size: int
    ) -> list[AuditEvent]:
        query = sa.select(audit_events).order_by(audit_events.c.id).limit(size)
        if after_id is not None:
            query = query.where(audit_events.c.id > after_id)
        if filters.method:
            column = audit_events.c.method
            query = query.where(
                column == filters.method
                if "/" in filters.method
                else column.endswith(f"/{filters.method}", autoescape=True)
            )
        if filters.tenant_id:
            query = query.where(audit_events.c.tenant_id == filters.tenant_id)
        if filters.start:
            query = query.where(audit_events.c.occurred_at >= filters.start)
        if filters.end:
            query = query.where(audit_events.c.occurred_at < filters.end)
        async with self._connection() as conn:
            result = await conn.execute(query)
            return [_event(row) for row in result.mappings()]


def _event(row: Mapping[Any, Any]) -> AuditEvent:
    return AuditEvent(
        id=int(row["id"]),
        occurred_at=row["occurred_at"],
        credential=row["credential"],
        method=row["method"],
        tenant_id=row["tenant_id"],
        request=row["request"],
        result=row["result"],
        message=row["message"] or "",
    )
