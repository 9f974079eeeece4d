"""The Stripe outbox worker: push each finalized invoice to the payment provider exactly once.

``GenerateInvoice(push_to_stripe)`` queues a row in the outbox (once per invoice). Every
replica runs ``InvoicePusher.run``; a worker leases due rows (other workers skip a leased
row until the lease ends) and, per invoice:

1. ensures the tenant's customer (key ``qp-tenant-<tenant>-customer``; its id is stored at
   once, so later invoices reuse it);
2. creates a draft invoice that leaves pending items out (key ``<base>-invoice``; its id is
   stored at once);
3. adds one item per ledger line with a non-zero amount that the draft does not carry yet
   (key ``<base>-line-<position>``; the position also travels in the item's metadata, so a
   retry after Stripe forgot the key still adds each line once);
4. checks that the provider's total equals the ledger's ``total_minor`` (a mismatch is
   permanent: nothing is finalized);
5. finalizes (key ``<base>-finalize``) and marks the row done.

``<base>`` is the outbox row's ``idempotency_base`` (derived from the invoice id). A crash or
a retry at any point replays the same keys, so nothing is created twice. A row is leased when
its push starts, and the lease (10 s) is extended every third of it while the push runs: a
worker that died holds its row only that long. A worker that lost its lease (stalled past
it, and another worker took the row) still pushes safely (same keys; Stripe answers a
concurrent duplicate with 409, retried), but its outcome is not recorded: the outbox's writes
are fenced by the lease, and the worker logs that. Retryable errors
(429, 409, 5xx, network) are retried with exponential backoff that honours Retry-After, up to
``max_attempts``; permanent errors fail the row and are shown on the invoice (``last_error``).

``PaymentWebhooks`` takes Stripe's webhook deliveries: the signature is verified, the event id
is recorded once (``stripe_webhook_events``), and ``invoice.paid`` marks the invoice paid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from quotaplane.domain.billing.payment_ports import (
    PaymentError,
    PaymentGateway,
    PushJob,
    PushOutbox,
)
from quotaplane.domain.billing.payments import customer_idempotency_key
from quotaplane.domain.errors import QuotaplaneError

log = logging.getLogger(__name__)


class InvoicePusher:
    """Drains the outbox (see the module docstring)."""

    def __init__(
        self,
        outbox: PushOutbox,
        gateway: PaymentGateway,
        *,
        interval: timedelta = timedelta(seconds=1),
        lease: timedelta = timedelta(seconds=10),
        max_attempts: int = 8,
        base_backoff: timedelta = timedelta(seconds=1),
        max_backoff: timedelta = timedelta(minutes=10),
        batch: int = 10,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._gateway = gateway
        self._interval = interval.total_seconds()
        self._lease = lease.total_seconds()
        self._max_attempts = max_attempts
        self._base_backoff = base_backoff.total_seconds()
        self._max_backoff = max_backoff.total_seconds()
        self._batch = batch
        self._on_outcome = on_outcome or (lambda outcome: None)

    async def run_once(self) -> int:
        """Push every due invoice once; the number of rows handled.

        Rows are leased one at a time, as each push starts: leasing a batch up front would let
        the leases of the later rows run out while the earlier ones are pushed.
        """
        handled = 0
        while handled < self._batch:
            jobs = await self._outbox.claim_due(limit=1, lease_seconds=self._lease)
            if not jobs:
                break
            await self.push(jobs[0])
            handled += 1
        return handled

    async def run(self) -> None:
        """Forever (cancel to stop); a ledger outage is logged and retried next interval."""
        while True:
            try:
                while await self.run_once() == self._batch:
                    pass
            except QuotaplaneError as error:
                log.warning("stripe outbox postponed: %s", error.message)
            except Exception:
                log.exception("stripe outbox failed")
            await asyncio.sleep(self._interval)

    async def push(self, job: PushJob) -> None:
        held = _HeldLease(job)
        keeper = asyncio.ensure_future(self._keep_lease(held))
        try:
            await self._push(job)
        except PaymentError as error:
            await self._failed(await _stop(keeper, held), error)
            return
        finally:
            keeper.cancel()
        if await self._outbox.done(await _stop(keeper, held)):
            self._on_outcome("ok")
        else:
            _stale(job, "done")

    async def _keep_lease(self, held: _HeldLease) -> None:
        """Extends the lease while the push runs (a push may take longer than one lease)."""
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                renewed = await self._outbox.extend(held.job, lease_seconds=self._lease)
            except QuotaplaneError as error:
                log.warning("lease of outbox row %s not extended: %s", held.job.outbox_id, error)
                continue
            if renewed is None:
                log.warning("lease of outbox row %s lost to another worker", held.job.outbox_id)
                return
            held.job = renewed

    async def _push(self, job: PushJob) -> None:
        invoice, base = job.invoice, job.idempotency_base
        customer = job.stripe_customer_id or await self._customer(job)
        remote_id = invoice.stripe_invoice_id
        if remote_id is None:
            key = f"{base}-invoice"
            remote_id = await self._gateway.create_invoice(customer, invoice, idempotency_key=key)
            await self._outbox.set_remote_invoice(invoice.id, remote_id)
        remote = await self._gateway.get_invoice(remote_id)
        if remote.status == "draft":
            for position, line in enumerate(invoice.lines):
                if line.amount_minor and str(position) not in remote.line_keys:
                    key = f"{base}-line-{position}"
                    await self._gateway.add_line(remote_id, invoice, position, idempotency_key=key)
            remote = await self._gateway.get_invoice(remote_id)
        if remote.total_minor != invoice.total_minor:
            raise PaymentError(
                f"Stripe invoice {remote_id} totals {remote.total_minor} minor units, the "
                f"ledger {invoice.total_minor}: not finalized",
                retryable=False,
            )
        if remote.status == "draft":
            await self._gateway.finalize(remote_id, idempotency_key=f"{base}-finalize")

    async def _customer(self, job: PushJob) -> str:
        tenant_id = job.invoice.tenant_id
        customer = await self._gateway.create_customer(
            tenant_id, job.tenant_name, idempotency_key=customer_idempotency_key(tenant_id)
        )
        await self._outbox.set_customer(tenant_id, customer)
        return customer

    async def _failed(self, job: PushJob, error: PaymentError) -> None:
        if error.retryable and job.attempts + 1 < self._max_attempts:
            backoff = min(self._max_backoff, self._base_backoff * 2**job.attempts)
            delay = max(backoff, error.retry_after or 0.0)
            if not await self._outbox.retry_later(job, delay_seconds=delay, error=error.message):
                _stale(job, f"retry ({error.message})")
                return
            log.warning(
                "stripe push of invoice %s retried in %.1f s: %s", job.invoice.id, delay, error
            )
            self._on_outcome("retried")
        else:
            if not await self._outbox.fail(job, error.message):
                _stale(job, f"failure ({error.message})")
                return
            log.error("stripe push of invoice %s failed: %s", job.invoice.id, error.message)
            self._on_outcome("failed")


class _HeldLease:
    """The job under the lease this worker holds now (``_keep_lease`` renews it)."""

    def __init__(self, job: PushJob) -> None:
        self.job = job


async def _stop(keeper: asyncio.Future[None], held: _HeldLease) -> PushJob:
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    return held.job


def _stale(job: PushJob, what: str) -> None:
    log.warning(
        "stripe push of invoice %s: %s not recorded, the lease of outbox row %s was lost to "
        "another worker (its outcome stands)",
        job.invoice.id,
        what,
        job.outbox_id,
    )
