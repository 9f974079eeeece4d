"""Incoming payment events (Stripe webhooks) applied to the outbox."""

from __future__ import annotations

from collections.abc import Callable

from quotaplane.domain.billing.ports import (
    PaymentError,
    PaymentEvent,
    PaymentEventLedger,
)
from quotaplane.domain.errors import InvalidArgument


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
