"""Admin use cases for tenants and plans, and the swappable plan registry.

``PlanRegistry`` holds the plan catalog in force. Everything that needs plans (the quota
engine through ``registry()`` or ``registry.current``, the admin use cases) reads it there, so
``ReloadPlans`` swaps the catalog for every reader at once. A reload validates the whole file
first (a failed one leaves the running catalog alone) and refuses a file that drops a plan some
tenant is still on. Tenant writes that name a plan and reloads take the registry's lock, so a
tenant cannot be put on a plan that a concurrent reload is removing (within this process; each
replica reloads its own file).

Tenant changes go through the tenant store, which bumps ``version``/``updated_at`` (replicas'
directories refresh from that) and records plan changes in ``plan_changes`` (billing prorates
from it). Usage reports and invoices are in ``admin_billing.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from quotaplane.domain.admin_ports import TenantFilter, TenantQueries
from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from quotaplane.domain.model import Tenant, TenantStatus, parse_tenant_id
from quotaplane.domain.money import format_money
from quotaplane.domain.paging import Cursor, decode_page_token, parse_page_size
from quotaplane.domain.plans import Charge, Package, PerUnit, PlanCatalog, Tier, load_plans
from quotaplane.domain.ports import TenantStore

MAX_TENANT_NAME = 200
MAX_EXTERNAL_ID = 128
MAX_REASON = 500
_LISTING = "tenants"  # names the listing in its page tokens


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PlanRegistry:
    """The plan catalog in force, replaceable at runtime. Calling it returns the catalog."""

    def __init__(
        self,
        catalog: PlanCatalog,
        *,
        path: Path,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._catalog = catalog
        self._path = path
        self._clock = clock
        self.loaded_at = clock()
        self.lock = asyncio.Lock()

    @property
    def current(self) -> PlanCatalog:
        return self._catalog

    @property
    def path(self) -> Path:
        return self._path

    def __call__(self) -> PlanCatalog:
        return self._catalog

    def replace(self, catalog: PlanCatalog) -> None:
        self._catalog = catalog
        self.loaded_at = self._clock()


@dataclass(frozen=True)
class TenantPage:
    tenants: list[Tenant]
    next_page_token: str


class TenantAdmin:
    """CreateTenant, GetTenant, ListTenants, UpdateTenantPlan, SuspendTenant, ResumeTenant."""

    def __init__(self, store: TenantStore, queries: TenantQueries, plans: PlanRegistry) -> None:
        self._store = store
        self._queries = queries
        self._plans = plans

    async def create(self, *, name: str, plan: str, external_id: str = "") -> Tenant:
        name = parse_tenant_name(name)
        external = parse_external_id(external_id)
        async with self._plans.lock:
            plan = self._known_plan(plan)
            return await self._store.create(name=name, plan=plan, external_id=external)

    async def get(self, tenant_id: str) -> Tenant:
        tenant_id = parse_tenant_id(tenant_id)
        tenant = await self._store.get(tenant_id)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        return tenant

    async def list(
        self, *, page_size: int, page_token: str, plan: str = "", status: TenantStatus | None
    ) -> TenantPage:
        size = parse_page_size(page_size)
        filters = TenantFilter(plan=self._known_plan(plan) if plan else None, status=status)
        token_fields = filters.as_token_fields()
        after = decode_page_token(page_token, token_fields, listing=_LISTING)
        rows = await self._queries.list_page(after=after, size=size + 1, filters=filters)
        page, more = rows[:size], len(rows) > size
        token = ""
        if more:
            last = page[-1]
            token = Cursor(last.created_at, last.id, token_fields, listing=_LISTING).encode()
        return TenantPage(tenants=page, next_page_token=token)

    async def update_plan(self, *, tenant_id: str, plan: str) -> Tenant:
        tenant = await self.get(tenant_id)
        async with self._plans.lock:
            plan = self._known_plan(plan)
            if tenant.plan == plan:
                return tenant  # no change: no plan_changes row, no cache churn
            return await self._store.update_plan(tenant.id, plan)

    async def suspend(self, *, tenant_id: str, reason: str = "") -> Tenant:
        tenant_id = parse_tenant_id(tenant_id)
        reason = reason.strip()
        if len(reason) > MAX_REASON:
            raise InvalidArgument(f"reason must be at most {MAX_REASON} characters")
        return await self._store.suspend(tenant_id, reason)

    async def resume(self, *, tenant_id: str) -> Tenant:
        tenant = await self.get(tenant_id)
        if tenant.active:
            return tenant  # resuming an active tenant changes nothing
        return await self._store.resume(tenant.id)

    def _known_plan(self, plan: str) -> str:
        if not plan:
            known = ", ".join(self._plans.current.names())
            raise InvalidArgument(f"plan is required; known plans: {known}")
        return self._plans.current.get(plan).name  # NotFound names the known plans


def parse_tenant_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidArgument(f"name is required (1-{MAX_TENANT_NAME} characters)")
    if len(name) > MAX_TENANT_NAME:
        raise InvalidArgument(f"name must be at most {MAX_TENANT_NAME} characters, got {len(name)}")
    if not name.isprintable():
        raise InvalidArgument("name must not contain control characters")
    return name


def parse_external_id(external_id: str) -> str | None:
    if not external_id:
        return None
    if len(external_id) > MAX_EXTERNAL_ID:
        raise InvalidArgument(f"external_id must be at most {MAX_EXTERNAL_ID} characters")
    if not external_id.isprintable() or external_id != external_id.strip():
        raise InvalidArgument(
            "external_id must not contain control characters or surrounding spaces"
        )
    return external_id


class PlanAdmin:
    """ListPlans and ReloadPlans."""

    def __init__(self, registry: PlanRegistry, queries: TenantQueries) -> None:
        self._registry = registry
        self._queries = queries

    def current(self) -> PlanRegistry:
        return self._registry

    async def reload(self) -> PlanRegistry:
        """Re-read the plans file; PlanFileError (nothing changes) or FailedPrecondition."""
        catalog = await asyncio.to_thread(load_plans, self._registry.path)
        async with self._registry.lock:
            in_use = await self._queries.plans_in_use()
            dropped = sorted(plan for plan in in_use if plan not in catalog)
            if dropped:
                raise FailedPrecondition(
                    f"{catalog.source} drops plan(s) still used by tenants: {', '.join(dropped)}; "
                    "move those tenants to another plan first. The running plans stay."
                )
            self._registry.replace(catalog)
        return self._registry


def price_summary(charge: Charge | None, currency: str) -> str:
    """A metric's price for operators, e.g. ``0.04 USD per started 1,000``."""
    if charge is None:
        return "free"
    if isinstance(charge, PerUnit):
        return f"{format_money(charge.unit_price, currency)} per unit"
    if isinstance(charge, Package):
        return f"{format_money(charge.package_price, currency)} per started {charge.package_size:,}"
    tiers = "; ".join(_tier_summary(tier, currency) for tier in charge.tiers)
    return f"{charge.model} tiers: {tiers}"


def _tier_summary(tier: Tier, currency: str) -> str:
    bound = "the rest" if tier.up_to is None else f"up to {tier.up_to:,}"
    fee = f" + {format_money(tier.flat_fee, currency)} flat" if tier.flat_fee else ""
    return f"{bound} at {format_money(tier.unit_price, currency)} each{fee}"
