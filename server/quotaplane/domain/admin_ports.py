"""Ports of the admin use cases: API key storage and tenant listings.

``storage/sql/api_keys.py`` and ``storage/sql/tenant_queries.py`` implement them; the tenant
writes themselves go through ``ports.TenantStore``. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from quotaplane.domain.billing_ports import HourlyUsage, StoredInvoice
from quotaplane.domain.model import ApiKey, Tenant, TenantStatus
from quotaplane.domain.paging import Cursor


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


class UsageReader(Protocol):
    """The ledger's hourly usage (``billing_ports.UsageLedger`` implements it)."""

    async def usage(self, tenant_id: str, start: datetime, end: datetime) -> list[HourlyUsage]:
        """Hourly usage of every metric with ``start <= hour_start < end``."""
        ...


@dataclass(frozen=True)
class InvoiceFilter:
    tenant_id: str | None = None
    period: str | None = None

    def as_token_fields(self) -> dict[str, str]:
        fields = {}
        if self.tenant_id is not None:
            fields["tenant_id"] = self.tenant_id
        if self.period is not None:
            fields["period"] = self.period
        return fields


class InvoiceQueries(Protocol):
    """Invoice reads and the void transition for the admin RPCs."""

    async def list_page(
        self, *, after: Cursor | None, size: int, filters: InvoiceFilter
    ) -> list[StoredInvoice]:
        """Up to ``size`` invoices, newest period first (then newest created), after ``after``."""
        ...

    async def get(self, invoice_id: str) -> StoredInvoice | None: ...

    async def queued_for_stripe(self, invoice_id: str) -> bool:
        """True once the invoice has a row in the Stripe outbox."""
        ...

    async def void(self, invoice_id: str, *, from_status: str) -> StoredInvoice | None:
        """Set status ``void`` if it is still ``from_status`` and not queued for Stripe.

        None if either changed meanwhile.
        """
        ...
