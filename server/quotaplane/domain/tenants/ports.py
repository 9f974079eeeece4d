"""Tenant ports: the tenants table, API key storage and tenant listings.

``storage/sql/tenants.py``, ``storage/sql/api_keys.py`` and ``storage/sql/tenant_queries.py``
implement them; the in-process caches of ``services/`` read them. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from quotaplane.domain.paging import Cursor
from quotaplane.domain.plans.problems import Tree
from quotaplane.domain.tenants.model import ApiKey, Tenant, TenantStatus


@dataclass(frozen=True)
class KeyGrant:
    """What an API key's hash grants, as the key cache holds it."""

    key_id: str
    tenant_id: str
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def changed_at(self) -> datetime:
        """The key's last change: its revocation, else its creation."""
        return self.revoked_at or self.created_at


class ApiKeyStore(Protocol):
    """The api_keys table. Only hashes are stored, never a secret."""

    async def create(self, *, tenant_id: str, name: str, prefix: str, key_hash: str) -> ApiKey: ...

    async def list_for_tenant(self, tenant_id: str, *, include_revoked: bool) -> list[ApiKey]:
        """The tenant's keys, oldest first."""
        ...

    async def revoke(self, key_id: str) -> ApiKey:
        """Set ``revoked_at`` once; an already revoked key is returned unchanged.

        NotFound for an unknown id.
        """
        ...

    async def find_by_hash(self, key_hash: str) -> KeyGrant | None: ...

    async def changed_since(self, since: datetime | None) -> list[KeyGrant]:
        """Keys created or revoked at or after ``since`` (every key for None)."""
        ...


@dataclass(frozen=True)
class TenantFilter:
    plan: str | None = None
    status: TenantStatus | None = None

    def as_token_fields(self) -> dict[str, str]:
        """The filters as a page token records them."""
        fields = {}
        if self.plan is not None:
            fields["plan"] = self.plan
        if self.status is not None:
            fields["status"] = self.status.value
        return fields


class TenantQueries(Protocol):
    """Read-only tenant queries the admin listings need beyond ``TenantStore``."""

    async def list_page(
        self, *, after: Cursor | None, size: int, filters: TenantFilter
    ) -> list[Tenant]:
        """Up to ``size`` tenants ordered by (created_at, id), strictly after ``after``."""
        ...

    async def plans_in_use(self) -> set[str]:
        """Names of the plans at least one tenant is on."""
        ...

    async def overrides_in_use(self) -> list[tuple[str, str, Tree]]:
        """(tenant id, plan, override document) of every tenant with overrides."""
        ...


class TenantSource(Protocol):
    """What the in-process tenant directory reads."""

    async def get(self, tenant_id: str) -> Tenant | None: ...

    async def list_changed_since(self, since: datetime | None) -> list[Tenant]:
        """Tenants whose ``updated_at`` is at or after ``since`` (all of them for None)."""
        ...


class TenantStore(TenantSource, Protocol):
    """The tenants table: what the admin use cases change."""

    async def create(self, *, name: str, plan: str, external_id: str | None = None) -> Tenant: ...

    async def list_page(self, *, after: str | None = None, size: int = 100) -> list[Tenant]: ...

    async def update_plan(self, tenant_id: str, plan: str) -> Tenant: ...

    async def suspend(self, tenant_id: str, reason: str = "") -> Tenant: ...

    async def resume(self, tenant_id: str) -> Tenant: ...

    async def set_overrides(self, tenant_id: str, document: Tree) -> Tenant:
        """Store (or, for None, clear) the tenant's overrides; NotFound for an unknown id."""
        ...
