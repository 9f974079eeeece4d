"""Outgoing webhooks: quota alerts as signed JSON POSTs (the WebhookSender port).

Each POST carries ``Quotaplane-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` over
``"<t>.<body>"`` with the shared secret (the scheme Stripe uses, so receivers know it): a
receiver recomputes it, compares in constant time and rejects old timestamps against replays.
Delivery runs in a worker thread (urllib) so the event loop never blocks on a slow receiver.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request

from quotaplane.domain.quota.alerts import QuotaAlert

SIGNATURE_HEADER = "Quotaplane-Signature"


def sign(body: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    body: bytes, header: str, secret: str, *, tolerance: int = 300, now: int | None = None
) -> bool:
    """True when ``header`` is a valid signature of ``body`` made within ``tolerance`` seconds."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    if not parts.get("t", "").isdigit() or "v1" not in parts:
        return False
    timestamp = int(parts["t"])
    if abs((now if now is not None else int(time.time())) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(body, secret, timestamp), f"t={timestamp},v1={parts['v1']}")


class HttpWebhookSender:
    def __init__(self, url: str, secret: str, *, timeout: float = 5.0) -> None:
        self._url = url
        self._secret = secret
        self._timeout = timeout

    async def send(self, notification_id: str, alert: QuotaAlert) -> None:
        await asyncio.to_thread(self._post, payload(notification_id, alert))

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={
                "content-type": "application/json",
                "user-agent": "quotaplane-webhooks/1",
                SIGNATURE_HEADER: sign(body, self._secret, int(time.time())),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"webhook answered HTTP {error.code}") from None


def payload(notification_id: str, alert: QuotaAlert) -> bytes:
    """The JSON body a webhook receives."""
    return json.dumps(
        {
            "id": notification_id,
            "type": "quota.threshold_crossed",
            "tenant_id": alert.tenant_id,
            "period": alert.period,
            "metric": alert.metric,
            "threshold_percent": alert.threshold,
            "used": alert.used,
            "quota": alert.quota,
            "occurred_at": alert.occurred_at.isoformat(),
        },
        separators=(",", ":"),
    ).encode()
