"""Ports of the Stripe side of billing: the payment gateway that receives finished invoices,
the outbox that hands them to it exactly once, and the incoming payment events. Implemented in
``integrations/stripe`` and ``storage/sql/outbox.py``; driven by ``services/invoice_push.py``
and ``domain/billing/payments.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from quotaplane.domain.billing.ports import StoredInvoice


class PaymentError(Exception):
    """A payment provider call failed. ``retryable``: 429, 5xx, network; else permanent."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.code = code  # the provider's error code, e.g. Stripe's "resource_already_exists"


@dataclass(frozen=True)
class RemoteInvoice:
    """The provider's view of a pushed invoice."""

    id: str
    status: str  # draft | open | paid | void | uncollectible
    total_minor: int
    line_keys: frozenset[str]  # the ledger line keys its items carry


@dataclass(frozen=True)
class PushJob:
    """One claimed outbox row: push this finalized invoice."""

    outbox_id: str
    invoice: StoredInvoice
    tenant_name: str
    stripe_customer_id: str | None
    idempotency_base: str
    attempts: int
    # The lease this worker holds: its end as written on the row. It fences the worker's
    # writes: once another worker leased the row, the row no longer carries this value.
    lease_until: datetime


class PaymentGateway(Protocol):
    """The payment provider (Stripe). Every write carries the caller's idempotency key."""

    async def create_customer(self, tenant_id: str, name: str, *, idempotency_key: str) -> str: ...

    async def create_invoice(
        self, customer_id: str, invoice: StoredInvoice, *, idempotency_key: str
    ) -> str:
        """A draft invoice that leaves the customer's pending items out."""
        ...

    async def get_invoice(self, remote_id: str) -> RemoteInvoice: ...

    async def add_line(
        self,
        remote_id: str,
        invoice: StoredInvoice,
        position: int,
        *,
        idempotency_key: str,
    ) -> None: ...

    async def finalize(self, remote_id: str, *, idempotency_key: str) -> None: ...


class PushOutbox(Protocol):
    """The ``stripe_outbox`` table and the Stripe ids the ledger keeps."""

    async def claim_due(self, *, limit: int, lease_seconds: float) -> list[PushJob]:
        """Due rows, each leased to this caller for ``lease_seconds`` (other workers skip it)."""
        ...

    async def set_customer(self, tenant_id: str, customer_id: str) -> None: ...

    async def set_remote_invoice(self, invoice_id: str, remote_id: str) -> None: ...

    async def extend(self, job: PushJob, *, lease_seconds: float) -> PushJob | None:
        """The job with its lease moved to ``lease_seconds`` from now; None if the lease was
        lost (another worker holds the row, or it is no longer pending)."""
        ...

    # The completions below are fenced by ``job.lease_until``: they return False and change
    # nothing when the caller no longer holds the lease.

    async def done(self, job: PushJob) -> bool: ...

    async def retry_later(self, job: PushJob, *, delay_seconds: float, error: str) -> bool: ...

    async def fail(self, job: PushJob, error: str) -> bool:
        """Give up: the row is failed and the error is shown on the invoice."""
        ...


@dataclass(frozen=True)
class PaymentEvent:
    """A verified webhook event from the payment provider."""

    id: str
    type: str  # e.g. "invoice.paid"
    remote_invoice_id: str | None


class PaymentEventLedger(Protocol):
    async def apply_event(self, event: PaymentEvent) -> bool:
        """Record the event once and apply it (``invoice.paid`` marks the invoice paid).

        False if the event id was seen before: nothing changes.
        """
        ...
