"""Admin use cases over the ledger: usage reports (GetUsage) and invoices (list, get, void).

Tenants and plans are in ``admin.py``; this module only reads usage and invoices the billing
code wrote, and voids invoices that Stripe does not hold yet.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from quotaplane.domain.billing.late_usage import late_units, ledger_units
from quotaplane.domain.billing.ports import (
    HourlyUsage,
    InvoiceFilter,
    InvoiceQueries,
    PeriodInvoices,
    ShadowDenialCounts,
    StoredInvoice,
    UsageHistory,
)
from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from quotaplane.domain.paging import Cursor, decode_page_token, parse_page_size
from quotaplane.domain.quota.decisions import parse_metric
from quotaplane.domain.tenants.admin import MAX_REASON
from quotaplane.domain.tenants.model import parse_tenant_id
from quotaplane.domain.tenants.ports import TenantSource
from quotaplane.domain.windows import Period, Window, as_utc, window_reset, window_start

log = logging.getLogger(__name__)

MAX_USAGE_RANGE = timedelta(days=400)
_LISTING = "invoices"  # names the listing in its page tokens


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
    # Per shadow limit of the metric ("<metric>/<window>", by name): admitted requests in the
    # range's hours that it would have refused.
    shadow_denials: tuple[tuple[str, int], ...] = ()
    not_yet_billed: int = 0  # late units of the range's frozen periods (late_usage.py)


@dataclass(frozen=True)
class LateUsage:
    """Units of a frozen period that no invoice carries yet."""

    tenant_id: str
    period: str
    metric: str
    quantity: int


async def period_late_units(
    invoices: PeriodInvoices, usage: UsageHistory, tenant_id: str, period: Period
) -> dict[str, int]:
    """The period's late units per metric (empty while it has no frozen invoice)."""
    billed = await invoices.period_invoices(tenant_id, period)
    if not any(invoice.frozen for invoice in billed):
        return {}
    rows = await usage.usage(tenant_id, period.start, period.end)
    return late_units(ledger_units(rows), billed)


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
        ledger: UsageHistory,
        *,
        flush: Callable[[str], Awaitable[int]] | None = None,
        clock: Callable[[], datetime] = _utc_now,
        shadow: ShadowDenialCounts | None = None,
        invoices: InvoiceQueries | None = None,
    ) -> None:
        self._tenants = tenants
        self._ledger = ledger
        self._flush = flush
        self._clock = clock
        self._shadow = shadow
        self._invoices = invoices

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
        first_hour = window_start(Window.HOUR, start)
        rows = await self._ledger.usage(tenant_id, first_hour, end)
        buckets = bucket_totals((r for r in rows if r.metric == metric), bucket)
        shadow = {}
        if self._shadow is not None:
            shadow = await self._shadow.counts(tenant_id, metric, first_hour, end)
        late = await self._not_yet_billed(tenant_id, metric, start, end)
        return UsageReport(
            tenant_id,
            metric,
            buckets,
            sum(b.quantity for b in buckets),
            shadow_denials=tuple(sorted(shadow.items())),
            not_yet_billed=late,
        )

    async def _not_yet_billed(
        self, tenant_id: str, metric: str, start: datetime, end: datetime
    ) -> int:
        if self._invoices is None:
            return 0
        late, period, last = 0, Period.of(start), Period.of(end - timedelta(microseconds=1))
        while True:
            units = await period_late_units(self._invoices, self._ledger, tenant_id, period)
            late += units.get(metric, 0)
            if period == last:
                return late
            period = period.next()

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
    late_usage: Sequence[LateUsage] = ()


class InvoiceAdmin:
    """ListInvoices, GetInvoice, VoidInvoice.

    Voiding is allowed for drafts and finalized invoices that were never queued for Stripe and
    have no supplementary invoice after them (void those first). A
    paid invoice, or one queued for or pushed to Stripe, is FAILED_PRECONDITION: Stripe holds
    it (or the outbox is about to push it), so it must be voided or refunded in Stripe.
    Voiding a void invoice answers it unchanged (a retried void must not fail). After a void,
    GenerateInvoice may create the period's next version. The reason is logged; the ledger has
    no column for it.
    """

    def __init__(
        self, tenants: TenantSource, invoices: InvoiceQueries, usage: UsageHistory | None = None
    ) -> None:
        self._tenants = tenants
        self._invoices = invoices
        self._usage = usage

    async def list(
        self, *, tenant_id: str, period: str, page_size: int, page_token: str
    ) -> InvoicePage:
        size = parse_page_size(page_size)
        filters = InvoiceFilter(
            tenant_id=await self._known_tenant(tenant_id) if tenant_id else None,
            period=str(Period.parse(period)) if period else None,
        )
        token_fields = filters.as_token_fields()
        after = decode_page_token(page_token, token_fields, listing=_LISTING)
        rows = await self._invoices.list_page(after=after, size=size + 1, filters=filters)
        page, token = rows[:size], ""
        if len(rows) > size:
            last = page[-1]
            token = Cursor(
                last.created_at, last.id, token_fields, sort=last.period, listing=_LISTING
            ).encode()
        return InvoicePage(page, token, await self._late_usage(page))

    async def _late_usage(self, page: Sequence[StoredInvoice]) -> Sequence[LateUsage]:
        """Late units of the page's frozen (tenant, period)s, so a list shows what is unbilled."""
        if self._usage is None:
            return []
        keys = dict.fromkeys((i.tenant_id, i.period) for i in page if i.frozen)
        late: list[LateUsage] = []
        for tenant_id, period in keys:
            units = await period_late_units(
                self._invoices, self._usage, tenant_id, Period.parse(period)
            )
            late.extend(LateUsage(tenant_id, period, m, q) for m, q in units.items())
        return late

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
        if invoice.status == InvoiceStatus.VOID:
            return invoice
        if invoice.status == InvoiceStatus.PAID:
            raise FailedPrecondition(
                f"invoice {invoice.id} is paid and cannot be voided; refund it in Stripe instead"
            )
        await self._no_supplements(invoice)
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

    async def _no_supplements(self, invoice: StoredInvoice) -> None:
        """A supplementary invoice bills on top of the one it supplements (late_usage.py):
        voiding that one first would leave the base fee and the earlier units unbilled."""
        period = Period.parse(invoice.period)
        later = [
            i.id
            for i in await self._invoices.period_invoices(invoice.tenant_id, period)
            if i.supplement > invoice.supplement
        ]
        if later:
            raise FailedPrecondition(
                f"invoice {invoice.id} has supplementary invoices ({', '.join(later)}); "
                "void those first"
            )

    async def _known_tenant(self, tenant_id: str) -> str:
        tenant_id = parse_tenant_id(tenant_id)
        if await self._tenants.get(tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        return tenant_id
