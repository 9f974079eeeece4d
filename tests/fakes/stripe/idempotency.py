"""Stripe's idempotency layer for POST requests, keyed by (API key, Idempotency-Key).

Rules (docs.stripe.com/api/idempotent_requests): the first request that starts executing
saves its status and body, success or error; a retry with the same key, endpoint and
parameters within 24 hours gets that response replayed byte for byte. The same key with
another endpoint or other parameters is a 400 `idempotency_error`. While the first request
is still running, a second one with its key gets a 409. Requests that fail parameter
validation save nothing, so they can be retried with the same key.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .wire import JSON, StripeError

KEY_TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes
    request_id: str


@dataclass
class _Entry:
    endpoint: str
    fingerprint: str
    started_at: float
    response: StoredResponse | None = None  # None while the first request is in flight


class IdempotencyCache:
    """Thread-safe store of idempotent results; `begin` then `complete` or `abandon`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}

    def begin(self, api_key: str, key: str, endpoint: str, params: JSON) -> StoredResponse | None:
        """The stored response to replay, or None when this request now owns the key.

        Raises StripeError for a key reused differently (400) or still in flight (409).
        """
        if len(key) > MAX_KEY_LENGTH:
            raise StripeError(
                400,
                "Idempotency keys can be at most 255 characters long.",
                type_="idempotency_error",
            )
        fingerprint = json.dumps(params, sort_keys=True)
        with self._lock:
            now = self._clock()
            entry = self._entries.get((api_key, key))
            if entry is None or now - entry.started_at >= KEY_TTL_SECONDS:
                self._entries[(api_key, key)] = _Entry(endpoint, fingerprint, now)
                return None
            _check_same_request(entry, key, endpoint, fingerprint)
            if entry.response is None:
                raise StripeError(
                    409,
                    "There is currently another in-progress request using this "
                    f"Idempotency Key ('{key}'). Please wait and try again.",
                    code="idempotency_key_in_use",
                )
            return entry.response

    def complete(self, api_key: str, key: str, response: StoredResponse) -> None:
        with self._lock:
            self._entries[(api_key, key)].response = response

    def abandon(self, api_key: str, key: str) -> None:
        """Forget a key whose request never started executing (validation failed)."""
        with self._lock:
            self._entries.pop((api_key, key), None)


def _check_same_request(entry: _Entry, key: str, endpoint: str, fingerprint: str) -> None:
    if entry.endpoint != endpoint:
        raise StripeError(
            400,
            "Keys for idempotent requests can only be used for the same endpoint they "
            f"were first used for ('{entry.endpoint}' vs '{endpoint}'). Try using a key "
            f"other than '{key}' if you meant to execute a different request.",
            type_="idempotency_error",
        )
    if entry.fingerprint != fingerprint:
        raise StripeError(
            400,
            "Keys for idempotent requests can only be used with the same parameters "
            f"they were first used with. Try using a key other than '{key}' if you meant "
            "to execute a different request.",
            type_="idempotency_error",
        )
