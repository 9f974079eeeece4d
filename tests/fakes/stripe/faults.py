"""Faults a test arms on the emulator: injected errors, dropped responses, held requests.

Each armed fault is consumed by the next matching requests (by path prefix), under a lock,
so a test can arm faults while the SDK talks to the server from other threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .wire import StripeError

_ERROR_TYPES = {402: "card_error", 429: "invalid_request_error"}
_ERROR_CODES = {402: "card_declined", 429: "rate_limit"}
_MESSAGES = {
    402: "Your card was declined.",
    429: "Too many requests hit the API too quickly. We recommend an exponential backoff "
    "of your requests.",
}


@dataclass
class InjectedError:
    """An error answered before the endpoint runs, so no idempotent result is saved."""

    status: int
    retry_after: int | None
    should_retry: bool | None

    def error(self) -> StripeError:
        return StripeError(
            self.status,
            _MESSAGES.get(self.status, "An unknown error occurred (injected by the emulator)."),
            type_=_ERROR_TYPES.get(self.status, "api_error"),
            code=_ERROR_CODES.get(self.status),
        )

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.should_retry is not None:
            headers["Stripe-Should-Retry"] = "true" if self.should_retry else "false"
        return headers


@dataclass
class Hold:
    """A request parked inside its endpoint (after taking its idempotency key)."""

    path_prefix: str
    entered: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class _Armed:
    remaining: int
    path_prefix: str
    fault: InjectedError | None = None
    query_contains: str = ""  # e.g. "starting_after": only the later pages of a list


class FaultPlan:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: list[_Armed] = []
        self._drops: list[_Armed] = []
        self._holds: list[Hold] = []
        self._taken: list[Hold] = []

    def add_error(
        self, count: int, path_prefix: str, fault: InjectedError, query_contains: str = ""
    ) -> None:
        with self._lock:
            self._errors.append(_Armed(count, path_prefix, fault, query_contains))

    def add_drop(self, count: int, path_prefix: str) -> None:
        with self._lock:
            self._drops.append(_Armed(count, path_prefix))

    def add_hold(self, path_prefix: str) -> Hold:
        hold = Hold(path_prefix)
        with self._lock:
            self._holds.append(hold)
        return hold

    def take_error(self, path: str, query: str = "") -> InjectedError | None:
        with self._lock:
            armed = _consume(self._errors, path, query)
        return armed.fault if armed else None

    def take_drop(self, path: str) -> bool:
        with self._lock:
            return _consume(self._drops, path) is not None

    def take_hold(self, path: str) -> Hold | None:
        with self._lock:
            for hold in self._holds:
                if path.startswith(hold.path_prefix):
                    self._holds.remove(hold)
                    self._taken.append(hold)
                    return hold
        return None

    def release_all(self) -> None:
        with self._lock:
            holds = self._holds + self._taken
            self._holds, self._taken = [], []
        for hold in holds:
            hold.release()


def _consume(armed: list[_Armed], path: str, query: str = "") -> _Armed | None:
    for entry in armed:
        if path.startswith(entry.path_prefix) and entry.query_contains in query:
            entry.remaining -= 1
            if entry.remaining <= 0:
                armed.remove(entry)
            return entry
    return None
