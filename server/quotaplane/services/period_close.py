"""The period close loop: every replica checks; one closes each due period, exactly once.

The rules are in ``domain/billing/period_close.py``. This module runs them: ``run`` ticks every
``interval``; a tick closes the due period unless it is done; ``close`` is also what
``quotaplane billing close`` calls (``restart`` runs a finished period again, ``dry_run``
changes nothing and says what a run would do). Progress goes to the log (one line per tenant
and a summary) and to the callbacks the composition root connects to the metrics.

``on_tenant`` is a hook run before each tenant is closed (tests slow a run down with it to
kill the process holding the lease); production leaves it unset.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from quotaplane.domain.billing.admin import period_late_units
from quotaplane.domain.billing.invoicing import InvoiceRequest, InvoiceService
from quotaplane.domain.billing.late_usage import describe
from quotaplane.domain.billing.period_close import (
    CloseCandidate,
    CloseLedger,
    CloseRun,
    Outcome,
    RunState,
    bills,
    due_period,
)
from quotaplane.domain.billing.ports import InvoiceLedger, UsageHistory
from quotaplane.domain.errors import QuotaplaneError, Unavailable
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.quota.engine import utc_now
from quotaplane.domain.windows import Period

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = timedelta(seconds=60)
DEFAULT_LEASE = timedelta(seconds=60)
PAGE = 200


@dataclass(frozen=True)
class TenantResult:
    tenant_id: str
    name: str
    outcome: Outcome | str  # a str in a dry run: what the run would do
    detail: str
    invoices_closed: int = 0


@dataclass
class CloseReport:
    period: Period
    status: str  # done | already_done | held | lease_lost | incomplete | dry_run
    run: int = 0
    tenants: list[TenantResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def invoices_closed(self) -> int:
        return sum(t.invoices_closed for t in self.tenants)


@dataclass(frozen=True)
class CloseObserver:
    """Where a run's figures go (the metrics); every callback optional."""

    invoice_closed: Callable[[], None] | None = None
    run_finished: Callable[[Period, float], None] | None = None


class PeriodCloser:
    def __init__(
        self,
        ledger: CloseLedger,
        invoices: InvoiceService,
        stored: InvoiceLedger,
        usage: UsageHistory,
        plans: Callable[[], PlanCatalog],
        *,
        grace: timedelta,
        push_to_stripe: bool,
        clock: Callable[[], datetime] = utc_now,
        interval: timedelta = DEFAULT_INTERVAL,
        lease: timedelta = DEFAULT_LEASE,
        observer: CloseObserver = CloseObserver(),
        on_tenant: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._ledger = ledger
        self._invoices = invoices
        self._stored = stored
        self._usage = usage
        self._plans = plans
        self._grace = grace
        self._push = push_to_stripe
        self._clock = clock
        self._interval = interval
        self._lease = lease
        self._observer = observer
        self._on_tenant = on_tenant
        self._owner = str(uuid.uuid4())  # this closer's attempts: it resumes its own at once

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Unavailable as error:  # the ledger is down: the next tick tries again
                log.warning("period close tick failed: %s", error)
            except Exception:
                log.exception("period close tick failed; retrying")
            await asyncio.sleep(self._interval.total_seconds())

    async def tick(self) -> CloseReport:
        return await self.close(due_period(self._clock(), self._grace))

    async def close(
        self,
        period: Period,
        *,
        restart: bool = False,
        dry_run: bool = False,
        report: Callable[[TenantResult], None] | None = None,
    ) -> CloseReport:
        """Close ``period`` (see the module docstring); ``report`` sees each tenant's result."""
        if dry_run:
            return await self._dry_run(period, report)
        started = time.monotonic()
        now = self._clock()
        run = await self._ledger.claim(
            period, self._owner, now=now, lease_until=now + self._lease, restart=restart
        )
        if run is None:
            log.info("period close held by another replica", extra={"period": str(period)})
            return CloseReport(period, "held")
        if run.state == RunState.DONE:
            return CloseReport(period, "already_done", run.run)
        result = await self._run(run, report)
        result.seconds = time.monotonic() - started
        self._summary(result)
        return result

    async def _run(
        self, run: CloseRun, report: Callable[[TenantResult], None] | None
    ) -> CloseReport:
        result = CloseReport(run.period, "done", run.run)
        done = await self._ledger.closed_tenants(run)
        log.info(
            "period close starting",
            extra={"period": str(run.period), "run": run.run, "resumed_after": len(done)},
        )
        async for candidate in self._billed(run.period):
            if candidate.tenant_id in done:
                continue
            if self._on_tenant is not None:
                await self._on_tenant(candidate.tenant_id)
            tenant = await self._close_tenant(run.period, candidate)
            if tenant.outcome == Outcome.FAILED:
                result.status = "incomplete"
            elif not await self._record(run, tenant):
                result.status = "lease_lost"
                return result
            result.tenants.append(tenant)
            if report is not None:
                report(tenant)
        if result.status == "incomplete":
            await self._ledger.release(run, now=self._clock())
        elif not await self._ledger.finish(run, now=self._clock()):
            result.status = "lease_lost"
        return result

    async def _billed(self, period: Period) -> AsyncIterator[CloseCandidate]:
        """The tenants the period bills, by id, page by page."""
        catalog, after = self._plans(), None
        while True:
            page = await self._ledger.candidates(period, after=after, limit=PAGE)
            for candidate in page:
                if bills(candidate, catalog):
                    yield candidate
            if len(page) < PAGE:
                return
            after = page[-1].tenant_id

    async def _close_tenant(self, period: Period, candidate: CloseCandidate) -> TenantResult:
        before = {
            i.id
            for i in await self._stored.period_invoices(candidate.tenant_id, period)
            if i.frozen
        }
        request = InvoiceRequest(candidate.tenant_id, str(period), finalize=True)
        try:
            invoice = await self._invoices.generate(request)
        except Unavailable:
            raise
        except QuotaplaneError as error:
            log.error(
                "period close: tenant not closed",
                extra={
                    "period": str(period),
                    "tenant_id": candidate.tenant_id,
                    "error": str(error),
                },
            )
            return TenantResult(candidate.tenant_id, candidate.name, Outcome.FAILED, str(error))
        frozen = [
            i for i in await self._stored.period_invoices(candidate.tenant_id, period) if i.frozen
        ]
        if self._push:
            for stored in frozen:
                await self._stored.enqueue_push(stored.id)
        closed = [i for i in frozen if i.id not in before]
        outcome = Outcome.CLOSED if closed else Outcome.UNCHANGED
        detail = ", ".join(
            f"{'supplementary ' if i.supplement else ''}invoice {i.id} {i.total} {i.currency}"
            for i in (closed or [invoice])
        )
        return TenantResult(candidate.tenant_id, candidate.name, outcome, detail, len(closed))

    async def _record(self, run: CloseRun, tenant: TenantResult) -> bool:
        now = self._clock()
        assert isinstance(tenant.outcome, Outcome)
        kept = await self._ledger.record_tenant(
            run,
            tenant.tenant_id,
            tenant.outcome,
            tenant.invoices_closed,
            now=now,
            lease_until=now + self._lease,
        )
        if not kept:
            log.warning(
                "period close lease lost; another replica continues",
                extra={"period": str(run.period), "tenant_id": tenant.tenant_id},
            )
            return False
        for _ in range(tenant.invoices_closed):
            if self._observer.invoice_closed is not None:
                self._observer.invoice_closed()
        log.info(
            "period close: tenant %s",
            tenant.outcome,
            extra={
                "period": str(run.period),
                "tenant_id": tenant.tenant_id,
                "detail": tenant.detail,
            },
        )
        return True

    def _summary(self, result: CloseReport) -> None:
        log.info(
            "period close %s",
            result.status,
            extra={
                "period": str(result.period),
                "run": result.run,
                "tenants": len(result.tenants),
                "invoices_closed": result.invoices_closed,
                "seconds": round(result.seconds, 3),
            },
        )
        if result.status == "done" and self._observer.run_finished is not None:
            self._observer.run_finished(result.period, result.seconds)

    async def _dry_run(
        self, period: Period, report: Callable[[TenantResult], None] | None
    ) -> CloseReport:
        """What a run would do now, from the ledger alone: nothing is flushed or written."""
        result = CloseReport(period, "dry_run")
        async for candidate in self._billed(period):
            tenant = await self._preview(period, candidate)
            result.tenants.append(tenant)
            if report is not None:
                report(tenant)
        return result

    async def _preview(self, period: Period, candidate: CloseCandidate) -> TenantResult:
        invoices = await self._stored.period_invoices(candidate.tenant_id, period)
        if not any(i.frozen for i in invoices):
            what = "finalize the draft" if invoices else "generate and finalize an invoice"
            return TenantResult(candidate.tenant_id, candidate.name, "would close", what)
        late = await period_late_units(self._stored, self._usage, candidate.tenant_id, period)
        if late:
            detail = f"late usage {describe(late)} on a supplementary invoice"
            return TenantResult(candidate.tenant_id, candidate.name, "would close", detail)
        return TenantResult(candidate.tenant_id, candidate.name, "unchanged", "already final")
