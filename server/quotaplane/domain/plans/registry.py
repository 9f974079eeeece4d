"""The plans in force and their administration: apply, history, rollback, reload, list.

Plans are versions in the ledger (``ports.PlanVersion``). ``PlanRegistry`` holds the catalog
of the newest version this replica has seen; everything that needs plans (the quota engine
through ``registry()``, pricing, the admin use cases) reads it there. ``PlanAdmin.apply``
validates a document fully, refuses one that drops a plan a tenant is on or that a tenant's
overrides no longer fit (nothing is stored then), stores it as the next version and serves it
at once on this replica; every other replica's poller (``services/plan_versions.py``) serves
it within ``QUOTAPLANE_CACHE_TTL``. A document equal to the newest version (same digest)
stores nothing. A rollback applies an older version's document as a new version.

At start (``bootstrap``), ``QUOTAPLANE_PLANS`` is applied when it differs from the newest
version; the packaged default plans are applied only to an empty ledger, so a replica started
without ``QUOTAPLANE_PLANS`` never undoes what an operator applied.

Tenant writes that name a plan and applies take the registry's lock, so within a process a
tenant cannot be put on a plan that a concurrent apply is removing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from quotaplane.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PlanFileError,
    Unavailable,
)
from quotaplane.domain.paging import Cursor, decode_page_token, parse_page_size
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.overrides import PlanOverride, build_effective
from quotaplane.domain.plans.ports import PlanVersion, PlanVersionStore, VersionTaken
from quotaplane.domain.tenants.ports import TenantQueries
from quotaplane.domain.text import text_problem

# (document, source) -> catalog, or PlanFileError; off the event loop (a document may be 1 MiB).
Parse = Callable[[str, str], Awaitable[PlanCatalog]]
_LISTING = "plan_versions"
APPLY_ATTEMPTS = 5
MAX_VERSION = 2**31 - 1  # the ledger's column is a 32-bit integer
MAX_DOCUMENT_CHARS = 1 << 20  # a plans file's limit (integrations/plans_file.py)
SERVE = "serve"  # applied_by of a version applied at start


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PlanRegistry:
    """The plan catalog in force, replaceable at runtime. Calling it returns the catalog.

    ``read`` reads the configured plans file (``source``) again (ReloadPlans); ``lock``
    serialises applies with tenant writes that name a plan (an ``asyncio.Lock``).
    """

    def __init__(
        self,
        catalog: PlanCatalog,
        *,
        read: Callable[[], Awaitable[str]],
        lock: AbstractAsyncContextManager[Any],
        file_source: str = "",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._catalog = catalog
        self.file_source = file_source
        self._read = read
        self._clock = clock
        self.loaded_at = clock()
        self.lock = lock

    @property
    def current(self) -> PlanCatalog:
        return self._catalog

    async def read(self) -> str:
        """The configured plans file's text as it is now."""
        return await self._read()

    def __call__(self) -> PlanCatalog:
        return self._catalog

    def replace(self, catalog: PlanCatalog) -> None:
        self._catalog = catalog
        self.loaded_at = self._clock()

    def install(self, catalog: PlanCatalog) -> bool:
        """Serve ``catalog`` unless this replica already serves a newer version."""
        if catalog.version and catalog.version <= self._catalog.version:
            return False
        self.replace(catalog)
        return True


def versioned(catalog: PlanCatalog, version: int) -> PlanCatalog:
    return dataclasses.replace(catalog, version=version)


@dataclass(frozen=True)
class Applied:
    version: PlanVersion
    changed: bool  # False: the document equals the newest version; nothing was stored


@dataclass(frozen=True)
class VersionPage:
    versions: list[PlanVersion]
    next_page_token: str


class PlanAdmin:
    """ListPlans, ApplyPlans, ReloadPlans, RollbackPlans, ListPlanVersions, and the start-up
    bootstrap."""

    def __init__(
        self,
        registry: PlanRegistry,
        queries: TenantQueries,
        versions: PlanVersionStore,
        parse: Parse,
    ) -> None:
        self._registry = registry
        self._queries = queries
        self._versions = versions
        self._parse = parse

    def current(self) -> PlanRegistry:
        return self._registry

    async def apply(
        self, document: str, *, source: str, applied_by: str, note: str = ""
    ) -> Applied:
        """Validate and store ``document`` as the next version; PlanFileError or
        FailedPrecondition store nothing."""
        if not document.strip():
            raise InvalidArgument("document is required: the plans YAML to apply")
        if problem := text_problem(document, "document", MAX_DOCUMENT_CHARS):
            raise InvalidArgument(problem)
        catalog = await self._parse(document, source or "ApplyPlans")
        async with self._registry.lock:
            for _ in range(APPLY_ATTEMPTS):
                latest = await self._versions.latest()
                if latest is not None and latest.digest == catalog.digest:
                    self._registry.install(versioned(catalog, latest.version))
                    return Applied(latest, changed=False)
                await self._check_tenants_fit(catalog)
                try:
                    stored = await self._versions.append(
                        after=latest.version if latest else 0,
                        document=document,
                        digest=catalog.digest,
                        source=catalog.source,
                        applied_by=applied_by,
                        note=note,
                    )
                except VersionTaken:
                    continue  # another replica applied meanwhile: decide against its version
                self._registry.install(versioned(catalog, stored.version))
                return Applied(stored, changed=True)
        raise Unavailable("plans are being applied by other replicas right now; retry")

    async def reload(self, *, applied_by: str) -> Applied:
        """ReloadPlans: the configured file, applied as a version."""
        source = self._registry.file_source or "ReloadPlans"
        return await self.apply(await self._registry.read(), source=source, applied_by=applied_by)

    async def rollback(self, version: int, *, applied_by: str) -> Applied:
        """Apply version ``version``'s document again, as a new version."""
        if not 1 <= version <= MAX_VERSION:
            raise InvalidArgument(f"version must be between 1 and {MAX_VERSION}, got {version}")
        old = await self._versions.get(version)
        if old is None:
            raise NotFound(f"plans version {version} does not exist")
        note = f"rollback to version {version}"
        return await self.apply(old.document, source=old.source, applied_by=applied_by, note=note)

    async def history(self, *, page_size: int, page_token: str) -> VersionPage:
        size = parse_page_size(page_size)
        after = decode_page_token(page_token, {}, listing=_LISTING)
        before = int(after.id) if after else None
        rows = await self._versions.history(before=before, limit=size + 1)
        page, token = rows[:size], ""
        if len(rows) > size:
            last = page[-1]
            token = Cursor(last.applied_at, str(last.version), {}, listing=_LISTING).encode()
        return VersionPage(versions=page, next_page_token=token)

    async def bootstrap(self, document: str, source: str, *, configured: bool) -> Applied | None:
        """At start: apply the plans file (see the module docstring), then serve the newest
        version. None when nothing was applied."""
        latest = await self._versions.latest()
        if latest is None or configured:
            applied = await self.apply(document, source=source, applied_by=SERVE)
            return applied if applied.changed else None
        if self.is_new(latest):
            self._registry.install(await self.catalog_of(latest))
        return None

    def is_new(self, version: PlanVersion) -> bool:
        """Whether ``version`` is newer than the one this replica serves."""
        return version.version > self._registry.current.version

    async def catalog_of(self, version: PlanVersion) -> PlanCatalog:
        """The catalog a stored version describes; PlanFileError if this build cannot read it."""
        return versioned(await self._parse(version.document, version.source), version.version)

    def install(self, catalog: PlanCatalog) -> bool:
        """Serve a stored version's catalog (the poller); False if it is not newer."""
        return self._registry.install(catalog)

    async def _check_tenants_fit(self, catalog: PlanCatalog) -> None:
        in_use = await self._queries.plans_in_use()
        dropped = sorted(plan for plan in in_use if plan not in catalog)
        if dropped:
            raise FailedPrecondition(
                f"{catalog.source} drops plan(s) still used by tenants: {', '.join(dropped)}; "
                "move those tenants to another plan first. The running plans stay."
            )
        misfits = []
        for tenant_id, plan, document in await self._queries.overrides_in_use():
            override = PlanOverride.of(document)
            if override is None or plan not in catalog:
                continue
            try:
                build_effective(catalog, plan, override)
            except PlanFileError as error:
                misfits.append(f"tenant {tenant_id}: {error.message}")
        if misfits:
            raise FailedPrecondition(
                "tenants' overrides do not fit these plans (change or clear them first; "
                f"the running plans stay): {'; '.join(misfits[:5])}"
            )
