"""What the in-process caches (tenants, API keys) share: the poll loop, the watermark rule and
the short-lived memory of ids that do not exist.

Each cache polls its store for rows changed since the newest change it has seen minus
``OVERLAP``: replicas' clocks differ a little and a row may commit with a timestamp slightly
older than one already seen. Re-reading a few seconds of changes is cheap and idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from quotaplane.domain.errors import QuotaplaneError

log = logging.getLogger(__name__)

OVERLAP = timedelta(seconds=2)
NEGATIVE_MAX = 10_000


def poll_since(watermark: datetime | None) -> datetime | None:
    """Where the next poll starts: everything (None) first, then the watermark minus OVERLAP."""
    return None if watermark is None else watermark - OVERLAP


async def poll_forever(refresh: Callable[[], Awaitable[int]], interval: float, what: str) -> None:
    """Call ``refresh`` every ``interval`` seconds until cancelled; failures are logged, never
    fatal: the cache keeps serving what it has."""
    while True:
        await asyncio.sleep(interval)
        try:
            await refresh()
        except (QuotaplaneError, OSError) as error:
            log.warning("%s refresh failed; serving cached entries: %s", what, error)
        except Exception:
            log.exception("%s refresh failed; serving cached entries", what)


class NegativeCache:
    """Ids known not to exist, each remembered for ``ttl`` seconds; at most NEGATIVE_MAX of them,
    so a flood of made-up ids can neither reach the database nor grow memory without bound."""

    def __init__(self, ttl: float, monotonic: Callable[[], float]) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._until: dict[str, float] = {}

    def __contains__(self, key: str) -> bool:
        return self._until.get(key, 0.0) > self._monotonic()

    def add(self, key: str) -> None:
        if len(self._until) >= NEGATIVE_MAX:
            now = self._monotonic()
            self._until = {k: until for k, until in self._until.items() if until > now}
            if len(self._until) >= NEGATIVE_MAX:
                self._until.clear()
        self._until[key] = self._monotonic() + self._ttl

    def discard(self, key: str) -> None:
        self._until.pop(key, None)
