"""The plans in force and their administration (ListPlans, ReloadPlans).

``PlanRegistry`` holds the plan catalog in force. Everything that needs plans (the quota
engine through ``registry()`` or ``registry.current``, the admin use cases) reads it there, so
``ReloadPlans`` swaps the catalog for every reader at once. A reload validates the whole file
first (a failed one leaves the running catalog alone) and refuses a file that drops a plan some
tenant is still on. Tenant writes that name a plan and reloads take the registry's lock, so a
tenant cannot be put on a plan that a concurrent reload is removing (within this process; each
replica reloads its own file).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from quotaplane.domain.errors import FailedPrecondition
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.tenants.ports import TenantQueries


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PlanRegistry:
    """The plan catalog in force, replaceable at runtime. Calling it returns the catalog.

    ``read`` reads the plans source again (ReloadPlans); ``lock`` serialises reloads with
    tenant writes that name a plan (an ``asyncio.Lock`` in the server).
    """

    def __init__(
        self,
        catalog: PlanCatalog,
        *,
        read: Callable[[], Awaitable[PlanCatalog]],
        lock: AbstractAsyncContextManager[Any],
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._catalog = catalog
        self._read = read
        self._clock = clock
        self.loaded_at = clock()
        self.lock = lock

    @property
    def current(self) -> PlanCatalog:
        return self._catalog

    async def read(self) -> PlanCatalog:
        """The plans source as it is now, validated; PlanFileError if it is not valid."""
        return await self._read()

    def __call__(self) -> PlanCatalog:
        return self._catalog

    def replace(self, catalog: PlanCatalog) -> None:
        self._catalog = catalog
        self.loaded_at = self._clock()


class PlanAdmin:
    """ListPlans and ReloadPlans."""

    def __init__(self, registry: PlanRegistry, queries: TenantQueries) -> None:
        self._registry = registry
        self._queries = queries

    def current(self) -> PlanRegistry:
        return self._registry

    async def reload(self) -> PlanRegistry:
        """Re-read the plans file; PlanFileError (nothing changes) or FailedPrecondition."""
        catalog = await self._registry.read()
        async with self._registry.lock:
            in_use = await self._queries.plans_in_use()
            dropped = sorted(plan for plan in in_use if plan not in catalog)
            if dropped:
                raise FailedPrecondition(
                    f"{catalog.source} drops plan(s) still used by tenants: {', '.join(dropped)}; "
                    "move those tenants to another plan first. The running plans stay."
                )
            self._registry.replace(catalog)
        return self._registry
