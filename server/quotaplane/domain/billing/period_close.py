"""The period close: which period is due, which tenants it bills, and the ledger it runs on.

The rules (the README's "How a period closes" says the same):

- A period is *due* once it has ended and the grace time has passed (``QUOTAPLANE_BILLING_GRACE``,
  so usage admitted in its last moments is flushed first): at ``now`` the due period is the
  one before the period holding ``now - grace``. Every replica checks; the automatic close
  looks at that one period (an older period never closed is closed by hand).
- The close bills every tenant that existed before the period ended and has usage in it or a
  plan with a base fee: its invoice is generated and finalized (``GenerateInvoice`` with
  finalize: the draft is frozen, late usage lands on a supplementary invoice, an invoice
  already frozen stays as it is) and, with Stripe configured, each frozen invoice of the period
  is queued for push.
- Exactly once however many replicas run: one *run* per period at a time, held by a lease in
  the ledger (``CloseLedger.claim``); each tenant closed is recorded with the lease still
  held, which extends it. An attempt that dies leaves its lease to expire; the next attempt
  resumes after the tenants recorded. ``GenerateInvoice``'s own idempotency makes a tenant
  closed twice (a lease lost mid-tenant) harmless.
- A finished period is left alone by the loop; run by hand it is a new run over every tenant,
  which changes nothing unless late usage arrived since (then it bills it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.windows import Period


def due_period(now: datetime, grace: timedelta) -> Period:
    """The latest period whose end plus ``grace`` is at or before ``now``."""
    return Period.of(now - grace).previous()


@dataclass(frozen=True)
class CloseCandidate:
    """A tenant that existed before the period ended, as the close sees it."""

    tenant_id: str
    name: str
    plan: str
    has_usage: bool  # usage in the period's ledger


def bills(candidate: CloseCandidate, catalog: PlanCatalog) -> bool:
    """True when the period bills the tenant: usage, or a plan with a base fee (a plan the
    catalog no longer has is billed too, so GenerateInvoice reports the problem)."""
    if candidate.has_usage:
        return True
    plan = catalog.plans.get(candidate.plan)
    return plan is None or plan.base_fee > 0


class RunState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class CloseRun:
    """One attempt's hold on a period's run: ``owner`` fences every write it makes."""

    period: Period
    run: int
    state: RunState
    owner: str
    lease_until: datetime


class Outcome(enum.StrEnum):
    CLOSED = "closed"  # this run finalized (or created) an invoice of the tenant
    UNCHANGED = "unchanged"  # every invoice of the period was frozen already, nothing late
    FAILED = "failed"  # GenerateInvoice refused; retried by the next run


class CloseLedger(Protocol):
    """The ledger's close runs and their progress."""

    async def claim(
        self, period: Period, owner: str, *, now: datetime, lease_until: datetime, restart: bool
    ) -> CloseRun | None:
        """Hold the period's run until ``lease_until``: start it (run 1) if it has none; take
        it over if its lease ended by ``now``; with ``restart``, start the next run of a
        finished period. A finished period without ``restart`` is returned as it is (DONE).
        None while another attempt holds an unexpired lease."""
        ...

    async def closed_tenants(self, run: CloseRun) -> frozenset[str]:
        """The tenants the run has recorded (by any attempt)."""
        ...

    async def record_tenant(
        self,
        run: CloseRun,
        tenant_id: str,
        outcome: Outcome,
        invoices_closed: int,
        *,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        """Record the tenant closed and extend the lease; False (nothing written) if the
        attempt no longer holds the run."""
        ...

    async def finish(self, run: CloseRun, *, now: datetime) -> bool:
        """Mark the run done; False if the attempt no longer holds it."""
        ...

    async def release(self, run: CloseRun, *, now: datetime) -> bool:
        """End the attempt's lease, leaving the run open (a tenant failed): the next attempt,
        from any replica or the command, continues it at once."""
        ...

    async def candidates(
        self, period: Period, *, after: str | None, limit: int
    ) -> list[CloseCandidate]:
        """Tenants created before the period's end, by id, after ``after``."""
        ...
