"""TenantDirectory: every tenant in process memory, with bounded staleness.

The hot path never queries the database. The mechanism, and why a change reaches every
replica within ``cache_ttl`` (1 s by default):

1. At start, ``refresh()`` loads every tenant from the store (``PolledCache``, shared with the
   API key cache).
2. A background task (``run()``, started by the composition root) polls the store every
   ``cache_ttl / 2`` for rows whose ``updated_at`` is at or after the newest ``updated_at``
   seen so far minus ``OVERLAP`` (2 s). The overlap covers clocks of different replicas that
   write ``updated_at``, SQLite's whole-second timestamps and transactions that commit after a
   later one. Rows seen again are harmless: a row replaces the cached one unless its
   ``version`` is older. Any admin change (plan, suspension, resume) bumps ``updated_at`` and
   ``version``, so it is in memory on every replica at most one poll interval plus one query
   after its commit. Pub/sub is not needed: the poll is one indexed range query per replica
   per half second, and it cannot miss a message.
3. A miss (a tenant created a moment ago) does one store lookup; concurrent misses for the
   same id share it. Unknown ids are remembered for ``cache_ttl / 2`` (at most
   ``NEGATIVE_MAX`` of them), so a flood of made-up ids cannot hammer the database.

If the store is unreachable, polls log and retry at the next interval; the cached tenants keep
serving (a store outage must not stop CheckQuota), and a miss answers Unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from quotaplane.domain.errors import InvalidArgument, NotFound, QuotaplaneError, Unavailable
from quotaplane.domain.tenants.model import Tenant, parse_tenant_id
from quotaplane.domain.tenants.ports import TenantSource
from quotaplane.services.polled_cache import PolledCache

log = logging.getLogger(__name__)


class TenantDirectory(PolledCache[Tenant]):
    """In-memory tenants with a poller; ``get`` is the hot-path lookup."""

    what = "tenant"

    def __init__(
        self,
        source: TenantSource,
        *,
        ttl: timedelta = timedelta(seconds=1),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source.list_changed_since, ttl=ttl, monotonic=monotonic)
        self._source = source
        self._tenants: dict[str, Tenant] = {}
        self._external: dict[str, str] = {}  # external id -> tenant id
        self._lookups: dict[str, asyncio.Future[Tenant | None]] = {}

    def __len__(self) -> int:
        return len(self._tenants)

    async def get(self, tenant_id: str) -> Tenant:
        """The tenant with this id; NotFound if the store does not have it."""
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            return tenant
        if tenant_id in self._unknown:
            raise NotFound(f"tenant {tenant_id} does not exist")
        tenant = await self._lookup(tenant_id)
        if tenant is None:
            self._unknown.add(tenant_id)
            raise NotFound(f"tenant {tenant_id} does not exist")
        return tenant

    async def tenant_for_claim(self, claim: str) -> str | None:
        """The tenant a verified token claim names: by id first, else by external id.

        External ids are matched in memory, so one set a moment ago is known after the next
        poll (``cache_ttl / 2``); an unknown claim costs no database query.
        """
        try:
            tenant_id = parse_tenant_id(claim)
        except InvalidArgument:
            return self._external.get(claim)
        try:
            return (await self.get(tenant_id)).id
        except NotFound:
            return self._external.get(claim)

    def _apply(self, tenant: Tenant) -> None:
        cached = self._tenants.get(tenant.id)
        if cached is None or tenant.version >= cached.version:
            self._tenants[tenant.id] = tenant
            if cached is not None and cached.external_id:
                self._external.pop(cached.external_id, None)
            if tenant.external_id:
                self._external[tenant.external_id] = tenant.id
        self._unknown.discard(tenant.id)

    @staticmethod
    def _changed_at(tenant: Tenant) -> datetime:
        return tenant.updated_at

    async def _lookup(self, tenant_id: str) -> Tenant | None:
        pending = self._lookups.get(tenant_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Tenant | None] = asyncio.get_running_loop().create_future()
        self._lookups[tenant_id] = future
        try:
            tenant = await self._source.get(tenant_id)
        except Exception as error:
            failure = _as_unavailable(error)
            future.set_exception(failure)
            future.exception()  # retrieved here, so a lone caller leaves no warning behind
            raise failure from None
        except BaseException:
            future.cancel()  # cancelled: callers sharing the lookup must not wait forever
            raise
        finally:
            self._lookups.pop(tenant_id, None)
        if tenant is not None:
            self._apply(tenant)
        future.set_result(tenant)
        return tenant


def _as_unavailable(error: Exception) -> QuotaplaneError:
    if isinstance(error, QuotaplaneError):
        return error
    return Unavailable(f"tenant store is unavailable: {type(error).__name__}")
