"""PlanVersionPoller: every replica serves the newest plans version within ``cache_ttl``.

The same mechanism as the tenant directory and the API key cache (``polled_cache.py``): a
poll every ``cache_ttl / 2`` for versions applied since the newest one seen minus
``OVERLAP``. When a poll brings a version newer than the one served, only the newest of them
is parsed (off the event loop: a document may be 1 MiB) and installed in the plan registry;
versions seen again are ignored. A stored document this build cannot parse (written by a newer
build) is logged and skipped: the replica keeps the plans it serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from quotaplane.domain.errors import PlanFileError
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.ports import PlanVersion, PlanVersionStore
from quotaplane.domain.plans.registry import PlanAdmin
from quotaplane.services.polled_cache import PolledCache

log = logging.getLogger(__name__)


class PlanVersionPoller(PolledCache[PlanVersion]):
    what = "plans version"

    def __init__(
        self,
        store: PlanVersionStore,
        admin: PlanAdmin,
        *,
        ttl: timedelta = timedelta(seconds=1),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(self._changed_since, ttl=ttl, monotonic=monotonic)
        self._store = store
        self._admin = admin
        self._parsed: dict[int, PlanCatalog] = {}

    async def _changed_since(self, since: datetime | None) -> list[PlanVersion]:
        rows = await self._store.changed_since(since)
        newest = max(rows, key=lambda row: row.version, default=None)
        if newest is not None and self._admin.is_new(newest):
            try:
                self._parsed = {newest.version: await self._admin.catalog_of(newest)}
            except PlanFileError as error:
                log.error("plans version %s cannot be served: %s", newest.version, error.message)
        return rows

    def _apply(self, row: PlanVersion) -> None:
        catalog = self._parsed.pop(row.version, None)
        if catalog is not None and self._admin.install(catalog):
            log.info("plans version served", extra={"version": row.version})

    @staticmethod
    def _changed_at(row: PlanVersion) -> datetime:
        return row.applied_at
