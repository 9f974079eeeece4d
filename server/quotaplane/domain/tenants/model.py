"""Tenants and their API keys as values: who is calling and whether they may."""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.plans.overrides import PlanOverride


class TenantStatus(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    plan: str
    status: TenantStatus
    created_at: datetime
    updated_at: datetime
    external_id: str | None = None
    stripe_customer_id: str | None = None
    suspended_reason: str | None = None
    version: int = 1
    overrides: PlanOverride | None = None  # merged over the plan: the tenant's effective plan

    @property
    def active(self) -> bool:
        return self.status is TenantStatus.ACTIVE


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


_CANONICAL_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_tenant_id(value: str, *, field_name: str = "tenant_id") -> str:
    """Canonical lowercase UUID string, or InvalidArgument naming the field."""
    if _CANONICAL_UUID_RE.fullmatch(value):  # the usual form, without building a UUID
        return value
    if not value:
        raise InvalidArgument(f"{field_name} is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise InvalidArgument(f"{field_name} must be a UUID, got {shown!r}") from None
