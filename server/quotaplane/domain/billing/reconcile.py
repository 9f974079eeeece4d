"""Reconciliation of one billing period: the ledger against the payment provider, per tenant.

Two comparisons, one per way of pricing:

- ``invoice`` (plans priced by quotaplane): each finalized or paid invoice of the period that
  was meant for Stripe (pushed, or queued for the push) must exist in Stripe with the same
  total in minor units; an invoice Stripe holds for the tenant and period (by the push's
  ``period`` metadata) that the ledger does not know is a difference too.
- ``meter`` (metrics priced in Stripe, ``stripe_meter``): the units the ledger booked for the
  metric in the period must equal the aggregated value of the tenant's Stripe customer on the
  meter of that event name over the period.

The tenant's plan is its current one (a plan changed during the period is compared by the
plan in force now). Run it after the period closed and the last meter batch was sent
(``QUOTAPLANE_METER_INTERVAL`` plus the flush): during the period, the newest seconds of usage
are still on their way and show as differences.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from quotaplane.domain.billing.payment_ports import RemoteInvoice
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.windows import Period


class Kind(enum.StrEnum):
    INVOICE = "invoice"
    METER = "meter"


@dataclass(frozen=True)
class LedgerTenant:
    id: str
    name: str
    plan: str
    stripe_customer_id: str | None


@dataclass(frozen=True)
class LedgerInvoice:
    id: str
    tenant_id: str
    total_minor: int
    stripe_invoice_id: str | None


@dataclass(frozen=True)
class ReconcileRow:
    tenant_id: str
    tenant_name: str
    kind: Kind
    item: str  # the invoice id, or "<metric> (meter <event name>)"
    ledger: Decimal | None  # None: the ledger has no such thing
    stripe: Decimal | None  # None: Stripe has no such thing
    note: str = ""

    @property
    def matches(self) -> bool:
        return self.ledger == self.stripe


class ReconcileLedger(Protocol):
    async def tenants(self) -> list[LedgerTenant]: ...

    async def invoices_for_stripe(self, period: Period) -> list[LedgerInvoice]:
        """The period's finalized or paid invoices that were pushed or queued for Stripe."""
        ...

    async def units(self, tenant_id: str, metric: str, period: Period) -> int: ...


class ReconcileProvider(Protocol):
    async def period_invoices(self, customer_id: str, period: str) -> list[RemoteInvoice]: ...

    async def meter_total(
        self, event_name: str, customer_id: str, start: int, end: int
    ) -> Decimal | None: ...


class Reconciler:
    """Builds the rows of ``quotaplane billing reconcile``."""

    def __init__(
        self, ledger: ReconcileLedger, provider: ReconcileProvider, plans: PlanCatalog
    ) -> None:
        self._ledger = ledger
        self._provider = provider
        self._plans = plans

    async def run(self, period: Period) -> list[ReconcileRow]:
        tenants = await self._ledger.tenants()
        invoices = await self._ledger.invoices_for_stripe(period)
        rows: list[ReconcileRow] = []
        for tenant in tenants:
            mine = [inv for inv in invoices if inv.tenant_id == tenant.id]
            rows += await self._invoice_rows(tenant, mine, period)
            rows += await self._meter_rows(tenant, period)
        return rows

    async def _invoice_rows(
        self, tenant: LedgerTenant, invoices: Sequence[LedgerInvoice], period: Period
    ) -> list[ReconcileRow]:
        remote: dict[str, RemoteInvoice] = {}
        if tenant.stripe_customer_id:
            found = await self._provider.period_invoices(tenant.stripe_customer_id, str(period))
            remote = {r.id: r for r in found if r.status != "void"}
        rows = []
        for invoice in invoices:
            theirs = remote.pop(invoice.stripe_invoice_id or "", None)
            note = "" if invoice.stripe_invoice_id else "not pushed yet"
            rows.append(
                _row(tenant, Kind.INVOICE, invoice.id, invoice.total_minor, theirs, note=note)
            )
        for extra in remote.values():  # in Stripe for this period, unknown to the ledger
            rows.append(_row(tenant, Kind.INVOICE, extra.id, None, extra, note="not in ledger"))
        return rows

    async def _meter_rows(self, tenant: LedgerTenant, period: Period) -> list[ReconcileRow]:
        plan = self._plans.plans.get(tenant.plan)
        if plan is None:
            return []
        rows = []
        for metric, event_name in sorted(plan.stripe_meters().items()):
            units = Decimal(await self._ledger.units(tenant.id, metric, period))
            stripe, note = await self._meter_total(tenant, event_name, period)
            if stripe is None and not units:
                continue  # nothing used, nothing reported
            item = f"{metric} (meter {event_name})"
            rows.append(ReconcileRow(tenant.id, tenant.name, Kind.METER, item, units, stripe, note))
        return rows

    async def _meter_total(
        self, tenant: LedgerTenant, event_name: str, period: Period
    ) -> tuple[Decimal | None, str]:
        if tenant.stripe_customer_id is None:
            return None, "no Stripe customer"
        start, end = int(period.start.timestamp()), int(period.end.timestamp())
        total = await self._provider.meter_total(event_name, tenant.stripe_customer_id, start, end)
        return total, "" if total is not None else f"Stripe has no active meter {event_name}"


def _row(
    tenant: LedgerTenant,
    kind: Kind,
    item: str,
    ledger_minor: int | None,
    remote: RemoteInvoice | None,
    *,
    note: str,
) -> ReconcileRow:
    ledger = Decimal(ledger_minor) if ledger_minor is not None else None
    stripe = Decimal(remote.total_minor) if remote is not None else None
    return ReconcileRow(tenant.id, tenant.name, kind, item, ledger, stripe, note)


def differences_by_kind(rows: Sequence[ReconcileRow]) -> dict[str, int]:
    """Per kind, how many tenants have at least one difference (every kind present)."""
    found = {kind.value: set[str]() for kind in Kind}
    for row in rows:
        if not row.matches:
            found[row.kind.value].add(row.tenant_id)
    return {kind: len(tenants) for kind, tenants in found.items()}
