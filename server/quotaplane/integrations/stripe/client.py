"""The one place that talks to Stripe: the ``stripe`` SDK with a pinned API version.

``StripeGateway`` implements ``PaymentGateway`` with customers, draft invoices that leave
pending items out, one invoice item per ledger line (carrying the line's position in its
metadata, so a retry long after Stripe forgot an idempotency key still adds each line once),
and finalize. The SDK is synchronous; every call runs in a worker thread through ``_call`` (a
list is paged to its end inside that thread), so the event loop never blocks and every
``StripeError`` goes through the one mapping, ``payment_error``. The SDK's own retries are
off: the outbox worker retries with backoff and honours ``Retry-After`` (a one-off batch such
as ``billing reconcile`` turns them on with ``network_retries``).

Errors become ``PaymentError``: 429, 409 (a concurrent request with the same key), 5xx and
network failures are retryable; everything else (bad parameters, auth, an idempotency key
reused with other parameters) is permanent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import stripe

from quotaplane.domain.billing.payment_ports import PaymentError, PaymentEvent, RemoteInvoice
from quotaplane.domain.billing.ports import StoredInvoice

API_VERSION = "2026-10-28.endive"
DUPLICATE_EVENT = "resource_already_exists"  # a meter event identifier Stripe has seen
LINE_KEY = "quotaplane_line"
T = TypeVar("T")


class StripeGateway:
    """PaymentGateway on Stripe (or any server speaking its v1 API, e.g. the test emulator)."""

    def __init__(
        self, api_key: str, *, api_base: str | None = None, network_retries: int = 0
    ) -> None:
        # The SDK logs every request at INFO; our own logs say what matters (retries, failures).
        logging.getLogger("stripe").setLevel(logging.WARNING)
        addresses: Any = {"api": api_base} if api_base else {}
        self._client = stripe.StripeClient(
            api_key,
            stripe_version=API_VERSION,
            base_addresses=addresses,
            max_network_retries=network_retries,
        )
        self._meters: dict[str, str] = {}  # event name -> active meter id, once looked up

    async def create_customer(self, tenant_id: str, name: str, *, idempotency_key: str) -> str:
        params: Any = {"name": name, "metadata": {"tenant_id": tenant_id}}
        customer = await self._call(
            lambda: self._client.v1.customers.create(
                params=params, options={"idempotency_key": idempotency_key}
            )
        )
        return str(customer.id)

    async def create_invoice(
        self, customer_id: str, invoice: StoredInvoice, *, idempotency_key: str
    ) -> str:
        params: Any = {
            "customer": customer_id,
            "currency": invoice.currency.lower(),
            "auto_advance": False,
            "collection_method": "charge_automatically",
            "pending_invoice_items_behavior": "exclude",
            "description": _description(invoice),
            "metadata": {
                "invoice_id": invoice.id,
                "tenant_id": invoice.tenant_id,
                "period": invoice.period,
                **_supplement_metadata(invoice),
            },
        }
        created = await self._call(
            lambda: self._client.v1.invoices.create(
                params=params, options={"idempotency_key": idempotency_key}
            )
        )
        return str(created.id)

    async def get_invoice(self, remote_id: str) -> RemoteInvoice:
        return await self._call(lambda: self._remote_invoice(remote_id))

    def _remote_invoice(self, remote_id: str) -> RemoteInvoice:
        """Runs in a worker thread: ``auto_paging_iter`` fetches further pages as it goes,
        so iterating it on the event loop would block the loop for every page."""
        found = self._client.v1.invoices.retrieve(remote_id)
        items: Any = {"invoice": remote_id, "limit": 100}
        page = self._client.v1.invoice_items.list(params=items)
        keys = frozenset(
            str(item.metadata[LINE_KEY])
            for item in page.auto_paging_iter()
            if item.metadata and LINE_KEY in item.metadata
        )
        return RemoteInvoice(str(found.id), str(found.status), int(found.total), keys)

    async def add_line(
        self, remote_id: str, invoice: StoredInvoice, position: int, *, idempotency_key: str
    ) -> None:
        line = invoice.lines[position]
        params: Any = {
            "invoice": remote_id,
            "amount": line.amount_minor,
            "currency": invoice.currency.lower(),
            "description": line.description,
            "metadata": {LINE_KEY: str(position), "invoice_id": invoice.id},
        }
        await self._call(
            lambda: self._client.v1.invoice_items.create(
                params=params, options={"idempotency_key": idempotency_key}
            )
        )

    async def finalize(self, remote_id: str, *, idempotency_key: str) -> None:
        params: Any = {"auto_advance": False}
        await self._call(
            lambda: self._client.v1.invoices.finalize_invoice(
                remote_id, params=params, options={"idempotency_key": idempotency_key}
            )
        )

    # -- Billing Meters ------------------------------------------------------------------

    async def send_meter_event(
        self, event_name: str, customer_id: str, value: int, *, identifier: str, timestamp: int
    ) -> None:
        params: Any = {
            "event_name": event_name,
            "payload": {"stripe_customer_id": customer_id, "value": str(value)},
            "identifier": identifier,
            "timestamp": timestamp,
        }
        try:
            await self._call(lambda: self._client.v1.billing.meter_events.create(params=params))
        except PaymentError as error:
            if error.code != DUPLICATE_EVENT:  # Stripe has this identifier: it was counted
                raise

    async def meter_total(
        self, event_name: str, customer_id: str, start: int, end: int
    ) -> Decimal | None:
        """The customer's aggregated value on the active meter of ``event_name`` in
        ``[start, end)`` (minute aligned); None when Stripe has no such meter."""
        return await self._call(lambda: self._meter_total(event_name, customer_id, start, end))

    def _meter_total(self, event_name: str, customer: str, start: int, end: int) -> Decimal | None:
        meter_id = self._meters.get(event_name) or self._find_meter(event_name)
        if meter_id is None:
            return None
        params: Any = {"customer": customer, "start_time": start, "end_time": end}
        page = self._client.v1.billing.meters.event_summaries.list(meter_id, params=params)
        # aggregated_value is a JSON number: its text is exact for the whole units we send.
        return sum((Decimal(str(s.aggregated_value)) for s in page.auto_paging_iter()), Decimal(0))

    def _find_meter(self, event_name: str) -> str | None:
        meters = self._client.v1.billing.meters.list(params={"status": "active", "limit": 100})
        for meter in meters.auto_paging_iter():
            self._meters[str(meter.event_name)] = str(meter.id)
        return self._meters.get(event_name)

    async def period_invoices(self, customer_id: str, period: str) -> list[RemoteInvoice]:
        """The customer's invoices that quotaplane pushed for ``period`` (by their metadata)."""
        return await self._call(lambda: self._period_invoices(customer_id, period))

    def _period_invoices(self, customer_id: str, period: str) -> list[RemoteInvoice]:
        page = self._client.v1.invoices.list(params={"customer": customer_id, "limit": 100})
        return [
            RemoteInvoice(str(inv.id), str(inv.status), int(inv.total), frozenset())
            for inv in page.auto_paging_iter()
            if inv.metadata and "period" in inv.metadata and inv.metadata["period"] == period
        ]

    async def _call(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except stripe.StripeError as error:
            raise payment_error(error) from None


def payment_error(error: stripe.StripeError) -> PaymentError:
    """Classify a Stripe SDK error as retryable or permanent."""
    status = error.http_status or 0
    message = (
        f"Stripe: {type(error).__name__} ({status or 'no response'}): {error.user_message or error}"
    )
    retryable = (
        isinstance(error, stripe.APIConnectionError | stripe.RateLimitError)
        or status in (409, 429)
        or status >= 500
    )
    return PaymentError(
        message,
        retryable=retryable,
        retry_after=_retry_after(error),
        code="rate_limit" if status == 429 else error.code,
    )


def _retry_after(error: stripe.StripeError) -> float | None:
    headers = error.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def webhook_verifier(secret: str) -> Callable[[bytes, str], PaymentEvent]:
    """Verifies ``Stripe-Signature`` (HMAC-SHA256, 5 min tolerance) and reads the event."""

    def verify(payload: bytes, signature: str) -> PaymentEvent:
        try:
            event = stripe.Webhook.construct_event(payload, signature, secret)
        except (stripe.SignatureVerificationError, ValueError) as error:
            raise PaymentError(f"webhook rejected: {error}", retryable=False) from None
        obj = event.data.object if event.data else None
        invoice_id = getattr(obj, "id", None) if event.type.startswith("invoice.") else None
        return PaymentEvent(str(event.id), str(event.type), str(invoice_id) if invoice_id else None)

    return verify


def _description(invoice: StoredInvoice) -> str:
    if invoice.supplements_invoice_id is None:
        return f"quotaplane {invoice.period}"
    return f"quotaplane {invoice.period}, late usage (supplement {invoice.supplement})"


def _supplement_metadata(invoice: StoredInvoice) -> dict[str, str]:
    if invoice.supplements_invoice_id is None:
        return {}
    return {"supplements_invoice_id": invoice.supplements_invoice_id}
