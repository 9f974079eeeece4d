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
from it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from quotaplane.domain.admin_ports import (
    InvoiceFilter,
    InvoiceQueries,
    TenantFilter,
    TenantQueries,
    UsageReader,
)
from quotaplane.domain.billing_ports import HourlyUsage, StoredInvoice
from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from quotaplane.domain.model import Tenant, TenantStatus, parse_metric, parse_tenant_id
from quotaplane.domain.money import format_money
from quotaplane.domain.paging import Cursor, decode_page_token, parse_page_size
from quotaplane.domain.plans import Charge, Package, PerUnit, PlanCatalog, Tier, load_plans
from quotaplane.domain.ports import TenantSource, TenantStore
from quotaplane.domain.windows import Period, Window, as_utc, window_reset, window_start

log = logging.getLogger(__name__)

MAX_TENANT_NAME = 200
MAX_EXTERNAL_ID = 128
MAX_REASON = 500
MAX_USAGE_RANGE = timedelta(days=400)


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
        after = decode_page_token(page_token, token_fields)
        rows = await self._queries.list_page(after=after, size=size + 1, filters=filters)
        page, more = rows[:size], len(rows) > size
        token = ""
        if more:
            last = page[-1]
            token = Cursor(created_at=last.created_at, id=last.id, filters=token_fields).encode()
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


@dataclass(frozen=True)
class UsageTotal:
    start: datetime
    end: datetime
    quantity: int


@dataclass(frozen=True)
class UsageReport:
    tenant_id: str
    metric: str
    buckets: list[UsageTotal]
    total: int
    unflushed: int = 0


class UsageReports:
    """GetUsage: a tenant's usage of a metric over a time range, in hour/day/month buckets.

    The ledger counts usage per UTC hour, so an hour counts when it overlaps the range (the
    range is widened to whole hours). Before reading, the tenant's usage still waiting in Redis
    is flushed (the same crash-safe flush the background task runs), so the report is current
    to the request and ``unflushed`` is always 0: nothing reported lives outside the ledger.
    """

    def __init__(
        self,
        tenants: TenantSource,
        ledger: UsageReader,
        *,
        flush: Callable[[str], Awaitable[int]] | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._tenants = tenants
        self._ledger = ledger
        self._flush = flush
        self._clock = clock

    async def usage(
        self,
        *,
        tenant_id: str,
        metric: str,
        start: datetime | None,
        end: datetime | None,
        bucket: Window,
    ) -> UsageReport:
        tenant_id = parse_tenant_id(tenant_id)
        metric = parse_metric(metric)
        start, end = self._range(start, end)
        if await self._tenants.get(tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        if self._flush is not None:
            await self._flush(tenant_id)
        rows = await self._ledger.usage(tenant_id, window_start(Window.HOUR, start), end)
        buckets = bucket_totals((r for r in rows if r.metric == metric), bucket)
        return UsageReport(tenant_id, metric, buckets, sum(b.quantity for b in buckets))

    def _range(self, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
        now = self._clock()
        start = (
            as_utc(start, field_name="start")
            if start is not None
            else window_start(Window.MONTH, now)
        )
        end = as_utc(end, field_name="end") if end is not None else now
        if end <= start:
            raise InvalidArgument(
                f"end ({end.isoformat()}) must be after start ({start.isoformat()})"
            )
        if end - start > MAX_USAGE_RANGE:
            raise InvalidArgument(
                f"the range from start to end must be at most {MAX_USAGE_RANGE.days} days, "
                f"got {(end - start).days} days"
            )
        return start, end


def bucket_totals(rows: Iterable[HourlyUsage], bucket: Window) -> list[UsageTotal]:
    """Hourly rows summed per bucket; only buckets with usage, in time order."""
    sums: dict[datetime, int] = {}
    for row in rows:
        key = window_start(bucket, row.hour_start)
        sums[key] = sums.get(key, 0) + row.quantity
    return [
        UsageTotal(start=at, end=window_reset(bucket, at), quantity=quantity)
        for at, quantity in sorted(sums.items())
        if quantity
    ]


@dataclass(frozen=True)
class InvoicePage:
    invoices: list[StoredInvoice]
    next_page_token: str


class InvoiceAdmin:
    """ListInvoices, GetInvoice, VoidInvoice.

    Voiding is allowed for drafts and finalized invoices that were never queued for Stripe. A
    paid invoice, or one queued for or pushed to Stripe, is FAILED_PRECONDITION: Stripe holds
    it (or the outbox is about to push it), so it must be voided or refunded in Stripe.
    Voiding a void invoice answers it unchanged (a retried void must not fail). After a void,
    GenerateInvoice may create the period's next version. The reason is logged; the ledger has
    no column for it.
    """

    def __init__(self, tenants: TenantSource, invoices: InvoiceQueries) -> None:
        self._tenants = tenants
        self._invoices = invoices

    async def list(
        self, *, tenant_id: str, period: str, page_size: int, page_token: str
    ) -> InvoicePage:
        size = parse_page_size(page_size)
        filters = InvoiceFilter(
            tenant_id=await self._known_tenant(tenant_id) if tenant_id else None,
            period=str(Period.parse(period)) if period else None,
        )
        token_fields = filters.as_token_fields()
        after = decode_page_token(page_token, token_fields)
        rows = await self._invoices.list_page(after=after, size=size + 1, filters=filters)
        page, token = rows[:size], ""
        if len(rows) > size:
            last = page[-1]
            token = Cursor(last.created_at, last.id, token_fields, sort=last.period).encode()
        return InvoicePage(invoices=page, next_page_token=token)

    async def get(self, invoice_id: str) -> StoredInvoice:
        invoice_id = parse_tenant_id(invoice_id, field_name="invoice_id")
        invoice = await self._invoices.get(invoice_id)
        if invoice is None:
            raise NotFound(f"invoice {invoice_id} does not exist")
        return invoice

    async def void(self, *, invoice_id: str, reason: str = "") -> StoredInvoice:
        reason = reason.strip()
        if len(reason) > MAX_REASON:
            raise InvalidArgument(f"reason must be at most {MAX_REASON} characters")
        invoice = await self.get(invoice_id)
        if invoice.status == "void":
            return invoice
        if invoice.status == "paid":
            raise FailedPrecondition(
                f"invoice {invoice.id} is paid and cannot be voided; refund it in Stripe instead"
            )
        if invoice.stripe_invoice_id or await self._invoices.queued_for_stripe(invoice.id):
            raise FailedPrecondition(
                f"invoice {invoice.id} is queued for or pushed to Stripe; "
                "void or refund it in Stripe instead"
            )
        voided = await self._invoices.void(invoice.id, from_status=invoice.status)
        if voided is None:
            raise FailedPrecondition(
                f"invoice {invoice.id} changed while it was being voided; read it and retry"
            )
        log.info("invoice voided", extra={"invoice_id": invoice.id, "reason": reason})
        return voided

    async def _known_tenant(self, tenant_id: str) -> str:
        tenant_id = parse_tenant_id(tenant_id)
        if await self._tenants.get(tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        return tenant_id
