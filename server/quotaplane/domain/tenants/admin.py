"""Admin use cases for tenants: create, get, list, change plan, suspend, resume, overrides.

Tenant writes that name a plan (or set overrides) take the plan registry's lock
(``domain/plans/registry.py``), so a tenant cannot be put on a plan, or given overrides, that a
concurrent apply is removing or no longer fits.

Tenant changes go through the tenant store, which bumps ``version``/``updated_at`` (replicas'
directories refresh from that) and records plan and override changes in ``plan_changes``
(billing prorates from it). Usage reports and invoices are in ``domain/billing/admin.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PlanFileError
from quotaplane.domain.paging import Cursor, decode_page_token, parse_page_size
from quotaplane.domain.plans.overrides import PlanOverride, build_effective
from quotaplane.domain.plans.problems import Tree
from quotaplane.domain.plans.registry import PlanRegistry
from quotaplane.domain.tenants.model import Tenant, TenantStatus, parse_tenant_id
from quotaplane.domain.tenants.ports import TenantFilter, TenantQueries, TenantStore
from quotaplane.domain.text import text_problem

MAX_TENANT_NAME = 200
MAX_EXTERNAL_ID = 128
MAX_REASON = 500
MAX_OVERRIDE_CHARS = 65_536
_LISTING = "tenants"  # names the listing in its page tokens


@dataclass(frozen=True)
class TenantPage:
    tenants: list[Tenant]
    next_page_token: str


class TenantAdmin:
    """CreateTenant, GetTenant, ListTenants, UpdateTenantPlan, SuspendTenant, ResumeTenant,
    SetTenantOverrides, ClearTenantOverrides (``plans/overrides.py``: an override is checked by
    the plan rules once merged over the tenant's plan; a plan change it would not fit is
    refused)."""

    def __init__(
        self,
        store: TenantStore,
        queries: TenantQueries,
        plans: PlanRegistry,
        *,
        parse_overrides: Callable[[str], Tree],
    ) -> None:
        self._store = store
        self._queries = queries
        self._plans = plans
        self._parse_overrides = parse_overrides

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
            if tenant.overrides is not None:
                self._check_fits(plan, tenant.overrides, FailedPrecondition)
            return await self._store.update_plan(tenant.id, plan)

    async def set_overrides(self, *, tenant_id: str, document: str) -> Tenant:
        """Replace the tenant's overrides (a partial plan entry, YAML or JSON) after checking
        the effective plan by the plan rules; INVALID_ARGUMENT names every problem."""
        tenant = await self.get(tenant_id)
        if problem := text_problem(document, "document", MAX_OVERRIDE_CHARS):
            raise InvalidArgument(problem)
        override = PlanOverride.of(self._parse_overrides(document))
        if override is None:
            raise InvalidArgument(
                "document is empty: give a partial plan entry such as "
                "'metrics: {requests: {limits: {month: 100000}}}', or clear the overrides"
            )
        async with self._plans.lock:
            self._check_fits(tenant.plan, override, InvalidArgument)
            return await self._store.set_overrides(tenant.id, override.document)

    async def clear_overrides(self, *, tenant_id: str) -> Tenant:
        tenant = await self.get(tenant_id)
        if tenant.overrides is None:
            return tenant
        return await self._store.set_overrides(tenant.id, None)

    def _check_fits(
        self, plan: str, override: PlanOverride, error: type[InvalidArgument | FailedPrecondition]
    ) -> None:
        try:
            build_effective(self._plans.current, plan, override)
        except PlanFileError as problem:
            raise error(problem.message) from None

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
