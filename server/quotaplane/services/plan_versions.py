"""PlanVersionPoller: every replica serves the newest plans version within ``cache_ttl``.

The same mechanism as the tenant directory and the API key cache (``polled_cache.py``): a
poll every ``cache_ttl / 2`` for versions applied since the newest one seen minus
``OVERLAP``. A version newer than the one served is parsed and installed in the plan registry
(``PlanAdmin.serve``); one seen again is ignored. A stored document this build cannot parse
(written by a newer build) is logged and skipped: the replica keeps the plans it serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from quotaplane.domain.errors import PlanFileError
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
        super().__init__(store.changed_since, ttl=ttl, monotonic=monotonic)
        self._admin = admin

    def _apply(self, row: PlanVersion) -> None:
        try:
            if self._admin.serve(row):
                log.info("plans version served", extra={"version": row.version})
        except PlanFileError as error:
            log.error("plans version %s cannot be served: %s", row.version, error.message)

    @staticmethod
    def _changed_at(row: PlanVersion) -> datetime:
        return row.applied_at
