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
a retry at any point replays the same keys, so nothing is created twice. The lease is short
(10 s): a worker that died holds its rows only that long, and a push slower than the lease
that another worker picks up is still safe (same keys; Stripe answers a concurrent duplicate
with 409, retried). Retryable errors
(429, 409, 5xx, network) are retried with exponential backoff that honours Retry-After, up to
``max_attempts``; permanent errors fail the row and are shown on the invoice (``last_error``).

``PaymentWebhooks`` takes Stripe's webhook deliveries: the signature is verified, the event id
is recorded once (``stripe_webhook_events``), and ``invoice.paid`` marks the invoice paid.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from quotaplane.domain.billing.ports import (
    PaymentError,
    PaymentGateway,
    PushJob,
    PushOutbox,
)
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
        """Push every due invoice once; the number of rows handled."""
        jobs = await self._outbox.claim_due(limit=self._batch, lease_seconds=self._lease)
        for job in jobs:
            await self.push(job)
        return len(jobs)

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
        try:
            await self._push(job)
        except PaymentError as error:
            await self._failed(job, error)
            return
        await self._outbox.done(job)
        self._on_outcome("ok")

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
            tenant_id, job.tenant_name, idempotency_key=f"qp-tenant-{tenant_id}-customer"
        )
        await self._outbox.set_customer(tenant_id, customer)
        return customer

    async def _failed(self, job: PushJob, error: PaymentError) -> None:
        if error.retryable and job.attempts + 1 < self._max_attempts:
            backoff = min(self._max_backoff, self._base_backoff * 2**job.attempts)
            delay = max(backoff, error.retry_after or 0.0)
            log.warning(
                "stripe push of invoice %s retried in %.1f s: %s", job.invoice.id, delay, error
            )
            await self._outbox.retry_later(job, delay_seconds=delay, error=error.message)
            self._on_outcome("retried")
        else:
            log.error("stripe push of invoice %s failed: %s", job.invoice.id, error.message)
            await self._outbox.fail(job, error.message)
            self._on_outcome("failed")
