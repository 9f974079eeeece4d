"""Billing ports: the Protocols the ledger, the Redis drain and the counters implement.

The billing use cases (``usage_events.py``, ``invoicing.py``, ``admin.py``, ``payments.py``)
and the services that drain usage and push invoices call these; ``storage/`` and
``integrations/stripe`` implement them; ``app/`` plugs them together. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from quotaplane.domain.billing.events import UsageEvent
from quotaplane.domain.billing.pricing import PricedInvoice, PricedLine
from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.domain.paging import Cursor
from quotaplane.domain.plans.overrides import PlanOverride
from quotaplane.domain.windows import Period

# --- usage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourlyUsage:
    """Units of one metric in one UTC hour; ``overage`` is the part admitted past a limit."""

    metric: str
    hour_start: datetime
    quantity: int
    overage: int = 0


class Recorded(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CLOSED = "closed"


@dataclass(frozen=True)
class PendingFlush:
    """Usage moved out of Redis's unflushed hash under a flush id, not yet known applied."""

    flush_id: str
    tenant_id: str
    usage: tuple[HourlyUsage, ...]


class UnflushedUsage(Protocol):
    """Redis side of the flush: where admitted usage waits until the ledger has it."""

    async def take(self, tenant_id: str) -> PendingFlush | None:
        """Atomically move the tenant's unflushed usage into a new pending record."""
        ...

    async def pending(self, tenant_id: str) -> list[PendingFlush]:
        """The tenant's pending records (left by a crash or a failed ledger write)."""
        ...

    async def complete(self, flush: PendingFlush) -> None:
        """Forget a pending record the ledger has applied."""
        ...

    async def tenants_with_usage(self) -> set[str]:
        """Every tenant with unflushed usage or pending records (a slow full sweep)."""
        ...


class ShadowDenialCounts(Protocol):
    """Admitted calls that shadow limits would have refused (counted per UTC hour)."""

    async def counts(
        self, tenant_id: str, metric: str, start: datetime, end: datetime
    ) -> dict[str, int]:
        """Per shadow limit name of ``metric``: its count over hours in ``[start, end)``."""
        ...


class UsageHistory(Protocol):
    """The ledger's hourly usage, read-only (usage reports)."""

    async def usage(self, tenant_id: str, start: datetime, end: datetime) -> list[HourlyUsage]:
        """Hourly usage of every metric with ``start <= hour_start < end``."""
        ...


class UsageLedger(UsageHistory, Protocol):
    """The ledger's usage tables."""

    async def apply_flush(self, flush: PendingFlush) -> bool:
        """Add the flush to the hourly usage once; False if this flush id was applied before."""
        ...

    async def apply_flushes(self, flushes: Sequence[PendingFlush]) -> list[bool]:
        """``apply_flush`` for many flushes in one transaction; one flag per flush, in order."""
        ...

    async def record_events(self, events: Sequence[UsageEvent]) -> list[Recorded]:
        """Store new events and add them to hourly usage in one transaction.

        One result per event, in order: STORED; DUPLICATE if ``(tenant_id, event_id)`` was
        recorded before (also by an earlier event of the same batch); CLOSED if the event's
        period has a finalized or paid invoice (checked in the same transaction, after
        waiting for any finalize of the tenant in progress).
        """
        ...

    async def units_and_applied(
        self, tenant_id: str, metric: str, period: Period, flush_ids: Sequence[str]
    ) -> tuple[int, frozenset[str]]:
        """The metric's units in the period, and which of ``flush_ids`` the ledger has
        applied, read at one instant (one statement): what a counter seed needs."""
        ...


class QuotaCounters(Protocol):
    """Charging usage recorded elsewhere to the tenant's quota counter."""

    async def add(self, tenant_id: str, metric: str, month_start: datetime, units: int) -> None:
        """Add ``units`` to the month counter of ``metric`` without any limit check.

        Only once the counter is seeded (see ``CounterSeeds``): before that, the seed reads
        these units from the ledger, which already holds them.
        """
        ...


class SeedOutcome(enum.Enum):
    SEEDED = "seeded"
    ALREADY = "already"  # the counter exists: seeded by another caller, or never lost
    LEDGER_MOVED = "ledger_moved"  # the ledger changed since it was read: read it again


@dataclass(frozen=True)
class SeedSnapshot:
    """What a seed reads from Redis before it reads the ledger."""

    generation: str  # changes whenever usage moves towards the ledger (see CounterSeeds)
    pending_flushes: tuple[str, ...]  # flush ids taken from Redis, maybe not applied yet


class CounterSeeds(Protocol):
    """Month counters (re)built from the ledger when Redis has none: the first call of a
    month, or after Redis lost it. CheckQuota charges nothing on a counter until it is."""

    async def snapshot(self, tenant_id: str) -> SeedSnapshot:
        """The tenant's generation and pending flushes, read at one instant. The generation
        changes when a flush takes or completes a record, and when RecordUsage adds to the
        ledger usage the counter could not take."""
        ...

    async def seed(
        self,
        tenant_id: str,
        metric: str,
        month_start: datetime,
        ledger_units: int,
        *,
        snapshot: SeedSnapshot,
        applied: frozenset[str],
    ) -> SeedOutcome:
        """Create the counter with ``ledger_units`` plus the month's usage still in Redis
        (leaving out pending flushes the ledger has ``applied``, as it counted them), unless
        it exists, or the generation is no longer the snapshot's."""
        ...


# --- invoices ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanChange:
    plan: str
    effective_at: datetime
    overrides: PlanOverride | None = None  # the tenant's overrides from then on


@dataclass(frozen=True)
class StoredInvoice:
    """An invoice as the ledger holds it."""

    id: str
    tenant_id: str
    period: str
    version: int
    status: str  # draft | finalized | paid | void
    currency: str
    lines: tuple[PricedLine, ...]
    subtotal: Decimal  # at the currency's minor unit
    total: Decimal
    total_minor: int
    created_at: datetime
    replaces_invoice_id: str | None = None
    # A supplementary invoice (late usage, see ``late_usage.py``): the invoice it supplements,
    # and its number among the period's invoices (0 for the primary invoice).
    supplements_invoice_id: str | None = None
    supplement: int = 0
    stripe_invoice_id: str | None = None
    finalized_at: datetime | None = None
    last_error: str | None = None
    plan_version: int = 0  # the plans version it was priced with (0: before versions)

    @property
    def frozen(self) -> bool:
        return InvoiceStatus(self.status).closed


# Prices a period from its hourly usage and the tenant's plan history (pure, no I/O).
Pricer = Callable[[Sequence[HourlyUsage], Sequence[PlanChange]], PricedInvoice]
# The late usage of a period: the full pricing and the period's frozen invoices -> the
# supplementary invoice's pricing, or None when every unit is billed (``late_usage.py``).
Supplementer = Callable[[PricedInvoice, Sequence[StoredInvoice]], PricedInvoice | None]


class PeriodInvoices(Protocol):
    async def period_invoices(self, tenant_id: str, period: Period) -> list[StoredInvoice]:
        """The period's invoices that are not void, primary first."""
        ...


class InvoiceLedger(PeriodInvoices, Protocol):
    """The ledger's invoice tables."""

    async def open_invoice(self, tenant_id: str, period: Period) -> StoredInvoice | None:
        """The tenant's invoice for the period that is not void, if any."""
        ...

    async def save_invoice(
        self, tenant_id: str, priced: PricedInvoice, *, finalize_at: datetime | None
    ) -> StoredInvoice:
        """Create the period's draft, or regenerate it in place; finalize it if asked.

        Concurrent calls for one (tenant, period) end with one invoice (the database's UNIQUE
        index decides); a frozen invoice is returned unchanged.
        """
        ...

    async def generate(
        self,
        tenant_id: str,
        period: Period,
        price: Pricer,
        *,
        finalize_at: datetime | None,
        supplement: Supplementer | None = None,
    ) -> StoredInvoice:
        """``save_invoice`` of ``price(usage, plan changes)``, read in the same transaction.

        Once the period has a frozen invoice, ``supplement`` decides: the period's
        supplementary invoice is created (or its draft regenerated) from what it returns, or,
        when it returns None (or is None), the newest frozen invoice (or the open
        supplementary draft) is returned unchanged. Concurrent calls create one
        supplementary invoice, not two (a UNIQUE index per supplement number).

        When finalizing, the transaction holds the tenant against new usage: an event or a
        flush of the tenant commits either before (and is on the invoice) or after (and sees
        the period closed); none slips in between the read and the freeze.
        """
        ...

    async def enqueue_push(self, invoice_id: str) -> None:
        """Queue the invoice for the Stripe outbox (once, whatever the number of calls)."""
        ...


# --- invoice queries (ListInvoices) -------------------------------------------------------------


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


class InvoiceQueries(PeriodInvoices, Protocol):
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
