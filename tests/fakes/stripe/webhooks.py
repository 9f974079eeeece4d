"""Signed webhook deliveries, as Stripe sends them, for testing a webhook receiver.

`Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<payload>" keyed by the
endpoint secret>`; receivers (and `stripe.Webhook.construct_event`) recompute and compare it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from .wire import new_id


def sign_webhook(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header value for `payload` signed with `secret` at `timestamp`."""
    signed = str(timestamp).encode("ascii") + b"." + payload
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event_payload(
    event_type: str,
    data_object: dict[str, Any],
    *,
    api_version: str | None = None,
    created: int | None = None,
    event_id: str | None = None,
) -> bytes:
    """A v1 `event` object (e.g. `invoice.paid` around an invoice) serialized as Stripe does."""
    event = {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": int(time.time()) if created is None else created,
        "data": {"object": data_object},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    return json.dumps(event, indent=2).encode("utf-8")
