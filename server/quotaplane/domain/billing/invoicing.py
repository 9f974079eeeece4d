"""GenerateInvoice: a tenant's invoice for one period, built from the ledger, stored once.

The rules:

- The period (``YYYY-MM``) must have started. Usage of the tenant still in Redis is flushed
  first, so the invoice sees everything admitted up to the call.
- Plans: the period is split at every change of the tenant's plan or overrides
  (``plan_changes``); each segment is priced under the effective plan in force (the plan with
  the overrides of the time, ``plans/overrides.py``) and the invoice prorates by time
  (``pricing.py``); a line an override changed names it. Time before the
  tenant's first plan is not billed. An hour of usage is billed under the plan in force at
  the hour's start (usage is aggregated per hour, so a mid-hour change cannot split it).
- One primary invoice per (tenant, period) that is not void (a UNIQUE index): concurrent
  calls end with the same invoice id. A draft is regenerated in place on every call; a
  finalized (or paid) invoice never changes.
- Once the period has a frozen invoice, usage the ledger has beyond the frozen invoices is
  late usage (``late_usage.py``): the call creates (or regenerates the draft of) a
  supplementary invoice that bills it incrementally, once however many replicas ask. Without
  late usage the period's newest frozen invoice is returned as it is.
- ``finalize`` freezes the invoice; allowed once the period has ended, or earlier with
  ``force`` (an admin closing a tenant's month early).
- ``push_to_stripe`` queues a frozen invoice for the Stripe outbox, once however often asked.

The invoice is priced from usage read in the transaction that stores it; a finalizing one
holds the tenant against new usage meanwhile (``InvoiceLedger.generate``), so a RecordUsage
event racing the finalize is either on the invoice or refused as late. Admitted usage of an
ended period is all in the ledger before: the tenant's flush, which runs first, also applies
the records other replicas are applying (the flush id makes it wait for them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from quotaplane.domain.billing.late_usage import supplementary_invoice
from quotaplane.domain.billing.ports import HourlyUsage, InvoiceLedger, PlanChange, StoredInvoice
from quotaplane.domain.billing.pricing import (
    BASE_FEE,
    PricedInvoice,
    PricedLine,
    Segment,
    price_invoice,
)
from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from quotaplane.domain.plans.documents import SEED_KEYS
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.overrides import PlanOverride, effective_plan, overridden_lines
from quotaplane.domain.quota.engine import utc_now
from quotaplane.domain.quota.ports import TenantLookup
from quotaplane.domain.tenants.model import Tenant, parse_tenant_id
from quotaplane.domain.windows import Period


@dataclass(frozen=True)
class InvoiceRequest:
    tenant_id: str
    period: str
    finalize: bool = False
    force: bool = False
    push_to_stripe: bool = False


class InvoiceService:
    """GenerateInvoice (see the module rules)."""

    def __init__(
        self,
        *,
        tenants: TenantLookup,
        plans: Callable[[], PlanCatalog],
        invoices: InvoiceLedger,
        flush: Callable[[str], Awaitable[object]] | None = None,
        clock: Callable[[], datetime] = utc_now,
        on_finalized: Callable[[StoredInvoice], None] | None = None,
    ) -> None:
        self._tenants = tenants
        self._plans = plans
        self._invoices = invoices
        self._flush = flush
        self._clock = clock
        self._on_finalized = on_finalized

    async def generate(self, request: InvoiceRequest) -> StoredInvoice:
        tenant_id, period = _parse(request)
        now = self._clock()
        _check_times(request, period, now)
        tenant = await self._tenants.get(tenant_id)
        if self._flush is not None:
            await self._flush(tenant_id)
        finalize_at = now if request.finalize else None
        catalog = self._plans()

        def price(usage: Sequence[HourlyUsage], changes: Sequence[PlanChange]) -> PricedInvoice:
            return price_tenant_period(tenant, period, catalog, usage, changes)

        invoice = await self._invoices.generate(
            tenant_id, period, price, finalize_at=finalize_at, supplement=supplementary_invoice
        )
        if invoice.finalized_at == finalize_at and finalize_at and self._on_finalized:
            self._on_finalized(invoice)  # finalized by this call, not an earlier one
        if request.push_to_stripe:
            if not invoice.frozen:
                raise FailedPrecondition(
                    f"invoice {invoice.id} is a draft: only finalized invoices are pushed "
                    "to Stripe (set finalize)"
                )
            await self._invoices.enqueue_push(invoice.id)
        return invoice


def price_tenant_period(
    tenant: Tenant,
    period: Period,
    catalog: PlanCatalog,
    usage: Sequence[HourlyUsage],
    changes: Sequence[PlanChange],
) -> PricedInvoice:
    """The tenant's period priced by segments of its terms (see the module rules)."""
    spans = terms_spans(period, changes, tenant)
    if not spans:
        raise FailedPrecondition(f"tenant {tenant.id} did not exist in period {period}")
    segments = []
    for (start, end, plan_name, override), metrics in zip(
        spans, split_usage(spans, usage), strict=True
    ):
        try:
            plan = effective_plan(catalog, plan_name, override)
        except NotFound:
            raise FailedPrecondition(
                f"period {period} was billed under plan {plan_name!r}, "
                "which the plans file no longer has"
            ) from None
        segments.append(Segment(plan, start, end, metrics))
    priced = price_invoice(period, segments)
    overrides: dict[datetime | None, PlanOverride | None] = {s[0]: s[3] for s in spans}
    lines = tuple(
        _name_override(line, catalog, overrides.get(line.span_start)) for line in priced.lines
    )
    return dataclasses.replace(priced, lines=lines, plan_version=catalog.version)


def _name_override(
    line: PricedLine, catalog: PlanCatalog, override: PlanOverride | None
) -> PricedLine:
    """A line the tenant's override changed names the override's key paths (those under the
    line's metric, or ``base_fee``), so the invoice shows why it differs from the plan."""
    if override is None:
        return line
    base = catalog.get(line.plan)
    if not overridden_lines(base, effective_plan(catalog, line.plan, override)).get(line.metric):
        return line
    paths = override.paths()
    mine = [path for path in paths if _concerns(path, line.metric)] or paths
    return dataclasses.replace(line, override=", ".join(mine))


def _concerns(path: str, metric: str) -> bool:
    if metric == BASE_FEE:
        return path == "base_fee"
    return path.startswith(f"metrics.{metric}.") or path in SEED_KEYS


Span = tuple[datetime, datetime, str]  # [start, end) and the plan in force
Terms = tuple[datetime, datetime, str, PlanOverride | None]  # ... and the overrides in force


def plan_spans(period: Period, changes: Sequence[PlanChange], current_plan: str) -> list[Span]:
    """The period cut at each plan change; ``current_plan`` throughout if there are none."""
    named = [PlanChange(change.plan, change.effective_at) for change in changes]
    return [(start, end, plan) for start, end, plan, _ in _spans(period, named, current_plan, None)]


def terms_spans(period: Period, changes: Sequence[PlanChange], tenant: Tenant) -> list[Terms]:
    """The period cut at each change of plan or overrides; the tenant's current terms
    throughout if there are none."""
    return _spans(period, changes, tenant.plan, tenant.overrides)


def _spans(
    period: Period,
    changes: Sequence[PlanChange],
    current_plan: str,
    current_override: PlanOverride | None,
) -> list[Terms]:
    if not changes:
        return [(period.start, period.end, current_plan, current_override)]
    starts: list[tuple[datetime, str, PlanOverride | None]] = []
    for change in sorted(changes, key=lambda c: c.effective_at):
        at = max(change.effective_at, period.start)
        if at >= period.end:
            break
        if starts and starts[-1][0] == at:
            starts.pop()  # several changes at one instant: the last one holds
        if not starts or _terms(starts[-1][1], starts[-1][2]) != _terms(
            change.plan, change.overrides
        ):
            starts.append((at, change.plan, change.overrides))
    if not starts:
        return []  # the first plan began after the period
    ends = [start for start, _, _ in starts[1:]] + [period.end]
    return [(start, end, plan, o) for (start, plan, o), end in zip(starts, ends, strict=True)]


def _terms(plan: str, override: PlanOverride | None) -> tuple[str, str]:
    return plan, override.key if override else ""


def split_usage(
    spans: Sequence[Span] | Sequence[Terms], usage: Sequence[HourlyUsage]
) -> list[dict[str, int]]:
    """Units per metric for each span; an hour goes to the span in force at its start."""
    split: list[dict[str, int]] = [{} for _ in spans]
    starts = [span[0] for span in spans]
    for row in usage:
        index = max((i for i, start in enumerate(starts) if start <= row.hour_start), default=0)
        split[index][row.metric] = split[index].get(row.metric, 0) + row.quantity
    return split


def _parse(request: InvoiceRequest) -> tuple[str, Period]:
    tenant_id = parse_tenant_id(request.tenant_id)
    if not request.period:
        raise InvalidArgument("period is required (YYYY-MM, e.g. 2026-11)")
    return tenant_id, Period.parse(request.period)


def _check_times(request: InvoiceRequest, period: Period, now: datetime) -> None:
    if period.start > now:
        raise InvalidArgument(f"period {period} has not started yet")
    if request.finalize and now < period.end and not request.force:
        raise FailedPrecondition(
            f"period {period} is still open until {period.end.isoformat()}: "
            "finalizing it early needs force"
        )
