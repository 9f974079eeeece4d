"""Incoming payment events (Stripe webhooks) applied to the outbox."""

from __future__ import annotations

from collections.abc import Callable

from quotaplane.domain.billing.payment_ports import PaymentError, PaymentEvent, PaymentEventLedger
from quotaplane.domain.errors import InvalidArgument


def customer_idempotency_key(tenant_id: str) -> str:
    """The key every creation of a tenant's Stripe customer carries (invoice push and meter
    events alike), so the tenant gets one customer whoever creates it first."""
    return f"qp-tenant-{tenant_id}-customer"


class PaymentWebhooks:
    """Webhook deliveries: verified, then applied once per event id (Stripe retries them)."""

    def __init__(
        self, ledger: PaymentEventLedger, verify: Callable[[bytes, str], PaymentEvent]
    ) -> None:
        self._ledger = ledger
        self._verify = verify

    async def receive(self, payload: bytes, signature: str) -> bool:
        """True if the event was new; InvalidArgument if the signature does not verify."""
        try:
            event = self._verify(payload, signature)
        except PaymentError as error:
            raise InvalidArgument(error.message) from None
        return await self._ledger.apply_event(event)
