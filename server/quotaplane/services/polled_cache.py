"""A table held in process memory with bounded staleness: ``PolledCache``, which the tenant
directory and the API key cache both are, and what it is made of (the poll loop, the watermark
rule, the short-lived memory of ids that do not exist, the shared catch-up poll).

A cache loads every row at start, then polls its store every ``ttl / 2`` for rows changed since
the newest change it has seen minus ``OVERLAP``: replicas' clocks differ a little and a row may
commit with a timestamp slightly older than one already seen. Re-reading a few seconds of
changes is cheap and idempotent. Only polls move the watermark: a row fetched alone (a cache
miss) must not make the next poll skip a change committed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from quotaplane.domain.errors import QuotaplaneError

log = logging.getLogger(__name__)

OVERLAP = timedelta(seconds=2)
NEGATIVE_MAX = 10_000
Row = TypeVar("Row")


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


class CatchUp:
    """A refresh for callers that need the store's state as of their arrival (a cache miss),
    shared by every caller waiting at the time and started at most once per ``min_gap``
    seconds: however many distinct misses arrive (a flood of made-up keys), the store sees a
    bounded number of queries per second, never one per miss.

    A caller joins the refresh that has not started yet (it will see every row committed
    before the caller arrived), or schedules one; a refresh already running may have read
    too early, so callers arriving after its start wait for the next.
    """

    def __init__(
        self,
        refresh: Callable[[], Awaitable[object]],
        *,
        min_gap: float,
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._refresh = refresh
        self._min_gap = min_gap
        self._monotonic = monotonic
        self._sleep = sleep
        self._pending: asyncio.Future[object] | None = None
        self._last_start = float("-inf")
        self.runs = 0

    async def wait(self) -> None:
        """Return once a refresh that started after this call has finished (or raise its
        error, e.g. Unavailable)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._run())
        await asyncio.shield(self._pending)

    async def _run(self) -> object:
        delay = self._last_start + self._min_gap - self._monotonic()
        if delay > 0:
            await self._sleep(delay)
        self._pending = None  # from now on, arrivals need a later refresh
        self._last_start = self._monotonic()
        self.runs += 1
        return await self._refresh()


class PolledCache(Generic[Row]):
    """Rows of a store in memory: ``refresh`` applies what changed since the last poll, ``run``
    polls forever. A subclass says how a row is kept (``_apply``) and when it changed."""

    what = "row"  # for logs

    def __init__(
        self,
        changed_since: Callable[[datetime | None], Awaitable[Sequence[Row]]],
        *,
        ttl: timedelta = timedelta(seconds=1),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._changed_since = changed_since
        self._ttl = ttl.total_seconds()
        self._monotonic = monotonic
        self._unknown = NegativeCache(self.poll_interval, monotonic)  # ids matching nothing
        self._watermark: datetime | None = None
        self.loaded = False

    @property
    def poll_interval(self) -> float:
        return self._ttl / 2

    async def refresh(self) -> int:
        """Apply every row changed since the last poll; the number of rows read."""
        changed = await self._changed_since(poll_since(self._watermark))
        for row in changed:
            self._apply(row)
            stamp = self._changed_at(row)
            if self._watermark is None or stamp > self._watermark:
                self._watermark = stamp
        self.loaded = True
        return len(changed)

    async def run(self) -> None:
        """Poll forever (cancel the task to stop). Errors are logged, never fatal."""
        await poll_forever(self.refresh, self.poll_interval, self.what)

    def _apply(self, row: Row) -> None:
        raise NotImplementedError

    @staticmethod
    def _changed_at(row: Row) -> datetime:
        raise NotImplementedError
