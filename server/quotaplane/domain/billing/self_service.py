"""A tenant's own usage (``GET /v1/usage``, the portal): composed from the operators' use cases.

Nothing is computed twice: the limits are the quota engine's dry run (what CheckQuota would
report, no unit consumed), the daily series is GetUsage's report (``UsageReports``, which
flushes the tenant's usage still in Redis first, so the series is current to the request),
the charges are GenerateInvoice's draft of the period (``InvoiceService``: the very invoice
finance sees, regenerated in place; a frozen invoice is returned as it is), and the invoice
list is ListInvoices' query. Who the tenant is comes from the caller (the proxy's verified
decision), never from this module's input.

A tenant's read never creates an invoice for a past period: a past period shows its invoice if
it has one (a draft is regenerated, a frozen one shown as it is) and no charges otherwise, so
looking at a month whose invoice an operator voided does not bring a new draft into being.

Limits describe the windows open now, so they are reported for the current period only; a
past period (``period``) has its series, charges and invoices. The plan is the tenant's
effective plan (its overrides merged in), as its decisions use it: the spend cap it sets, and
for each shadow limit how many requests of the period it would have refused (GetUsage's
count), are part of the view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from quotaplane.domain.billing.admin import UsageReports, UsageTotal
from quotaplane.domain.billing.invoicing import InvoiceRequest, InvoiceService
from quotaplane.domain.billing.ports import (
    InvoiceFilter,
    InvoiceLedger,
    InvoiceQueries,
    StoredInvoice,
)
from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.quota.decisions import LimitState, QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine, utc_now
from quotaplane.domain.tenants.model import Tenant
from quotaplane.domain.windows import Period, Window

MAX_INVOICES = 24  # two years of monthly invoices, newest first


@dataclass(frozen=True)
class LimitUsage:
    """One limit of one metric as the tenant sees it."""

    state: LimitState

    @property
    def used(self) -> int:
        if self.state.used is not None:
            return self.state.used
        return self.state.limit - self.state.remaining + self.state.overage


@dataclass(frozen=True)
class TenantUsage:
    tenant: Tenant
    period: Period
    current: bool  # the period holds now: limits are reported
    generated_at: datetime
    limits: tuple[LimitUsage, ...]
    daily: dict[str, list[UsageTotal]]  # metric -> days with usage, in order
    charges: StoredInvoice | None  # None: a past period without an invoice
    invoices: tuple[StoredInvoice, ...]
    spend_cap: Decimal | None = None  # the effective plan's monthly cap, in its currency
    # Shadow limit name ("<metric>/<window>") -> requests of the period it would have refused.
    shadow_denials: dict[str, int] = field(default_factory=dict)


class SelfService:
    """The tenant's view of its own usage, charges and invoices."""

    def __init__(
        self,
        *,
        engine: QuotaEngine,
        reports: UsageReports,
        invoices: InvoiceService,
        invoice_ledger: InvoiceLedger,
        invoice_queries: InvoiceQueries,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._engine = engine
        self._reports = reports
        self._invoices = invoices
        self._ledger = invoice_ledger
        self._queries = invoice_queries
        self._clock = clock

    async def usage(self, tenant_id: str, period: str | None = None) -> TenantUsage:
        """InvalidArgument for a malformed or future period; NotFound for an unknown tenant."""
        now = self._clock()
        chosen = Period.parse(period) if period else Period.of(now)
        if chosen.start > now:
            raise InvalidArgument(f"period {chosen} has not started yet")
        tenant = await self._engine.tenant(tenant_id)
        plan = self._engine.plan_for(tenant)
        metrics = sorted(plan.metrics)
        current = chosen == Period.of(now)
        # The invoice first: it flushes the tenant's usage, so the series below reads it too.
        charges = await self._charges(tenant, chosen, current)
        shadow: dict[str, int] = {}
        return TenantUsage(
            tenant=tenant,
            period=chosen,
            current=current,
            generated_at=now,
            limits=await self._limits(tenant, metrics) if current else (),
            daily=await self._daily(tenant, metrics, chosen, now, shadow),
            charges=charges,
            invoices=await self._invoice_list(tenant.id),
            spend_cap=plan.spend_cap,
            shadow_denials=shadow,
        )

    async def _charges(self, tenant: Tenant, period: Period, current: bool) -> StoredInvoice | None:
        if not current and await self._ledger.open_invoice(tenant.id, period) is None:
            return None
        return await self._invoices.generate(InvoiceRequest(tenant.id, str(period)))

    async def _limits(self, tenant: Tenant, metrics: Sequence[str]) -> tuple[LimitUsage, ...]:
        states: list[LimitUsage] = []
        for metric in metrics:
            look = QuotaRequest.parse(tenant_id=tenant.id, metric=metric, cost=1, dry_run=True)
            decision = await self._engine.check(look)
            states += [LimitUsage(state) for state in decision.limits]
        return tuple(states)

    async def _daily(
        self,
        tenant: Tenant,
        metrics: Sequence[str],
        period: Period,
        now: datetime,
        shadow: dict[str, int],
    ) -> dict[str, list[UsageTotal]]:
        """Per metric, its days with usage; ``shadow`` gets the period's would-be denials."""
        end = min(period.end, now)
        daily: dict[str, list[UsageTotal]] = {metric: [] for metric in metrics}
        if end <= period.start:
            return daily
        for metric in metrics:
            report = await self._reports.usage(
                tenant_id=tenant.id, metric=metric, start=period.start, end=end, bucket=Window.DAY
            )
            daily[metric] = report.buckets
            shadow.update(report.shadow_denials)
        return daily

    async def _invoice_list(self, tenant_id: str) -> tuple[StoredInvoice, ...]:
        page = await self._queries.list_page(
            after=None, size=MAX_INVOICES, filters=InvoiceFilter(tenant_id=tenant_id)
        )
        return tuple(page)
