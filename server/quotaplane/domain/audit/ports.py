"""Audit ports: the audit trail in the ledger (``storage/sql/audit.py``). No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class AuditEvent:
    """One AdminService mutation as it was asked and answered."""

    id: int  # ledger order: the order the mutations finished in
    occurred_at: datetime
    credential: str  # the name of the token's role ("admin"), never the secret
    method: str  # "quotaplane.v1.AdminService/CreateTenant"
    tenant_id: str | None  # the tenant it concerned, when there is one
    request: str  # the request as JSON, secrets redacted
    result: str  # "OK" or the gRPC status code name ("INVALID_ARGUMENT")
    message: str = ""  # the error message, when it failed


@dataclass(frozen=True)
class NewAuditEvent:
    credential: str
    method: str
    tenant_id: str | None
    request: str
    result: str
    message: str = ""


@dataclass(frozen=True)
class AuditFilter:
    method: str | None = None  # full name or just the method name ("CreateTenant")
    tenant_id: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive

    def as_token_fields(self) -> dict[str, str]:
        fields = {"method": self.method or "", "tenant_id": self.tenant_id or ""}
        fields["start"] = self.start.isoformat() if self.start else ""
        fields["end"] = self.end.isoformat() if self.end else ""
        return fields


class AuditStore(Protocol):
    async def record(self, event: NewAuditEvent) -> AuditEvent: ...

    async def list_page(
        self, *, filters: AuditFilter, after_id: int | None, size: int
    ) -> list[AuditEvent]:
        """Up to ``size`` events matching ``filters`` in ledger order, after ``after_id``."""
        ...
