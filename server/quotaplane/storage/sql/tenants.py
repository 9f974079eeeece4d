"""SQL tenant store: the ``tenants`` table (and its ``plan_changes`` history) behind TenantStore.

Every change sets ``updated_at`` and bumps ``version``; replicas' tenant directories poll
``list_changed_since`` on that column (see ``services/tenant_directory.py``). A plan is recorded in
``plan_changes`` when a tenant is created and whenever it changes, in the same transaction,
so billing can prorate by the plan in force at each instant. Whether a plan name exists is the
caller's check (the catalog lives in memory, not in SQL).

Database failures become ``Unavailable``; a duplicate ``external_id`` is ``AlreadyExists``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.errors import AlreadyExists, NotFound
from quotaplane.domain.plans.overrides import PlanOverride
from quotaplane.domain.plans.problems import Tree
from quotaplane.domain.tenants.model import Tenant, TenantStatus
from quotaplane.storage.sql.access import SqlStore, database_errors, utc_now
from quotaplane.storage.sql.tables import plan_changes, tenants

MAX_PAGE = 1000


class SqlTenantStore(SqlStore):
    """TenantStore on Postgres or SQLite (SQLAlchemy async)."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return _database_errors()

    async def create(self, *, name: str, plan: str, external_id: str | None = None) -> Tenant:
        now = self._clock()
        row = {
            "id": str(uuid.uuid4()),
            "name": name,
            "external_id": external_id,
            "plan": plan,
            "status": TenantStatus.ACTIVE.value,
            "created_at": now,
            "updated_at": now,
            "version": 1,
            "stripe_customer_id": None,
            "suspended_reason": None,
        }
        async with self._transaction() as conn:
            await conn.execute(tenants.insert().values(**row))
            await conn.execute(
                plan_changes.insert().values(tenant_id=row["id"], plan=plan, effective_at=now)
            )
        return _tenant(row)

    async def get(self, tenant_id: str) -> Tenant | None:
        async with self._connection() as conn:
            result = await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))
            row = result.mappings().first()
        return _tenant(row) if row is not None else None

    async def list_changed_since(self, since: datetime | None) -> list[Tenant]:
        query = sa.select(tenants)
        if since is not None:
            query = query.where(tenants.c.updated_at >= since)
        async with self._connection() as conn:
            result = await conn.execute(query)
            return [_tenant(row) for row in result.mappings()]

    async def list_page(self, *, after: str | None = None, size: int = 100) -> list[Tenant]:
        """Tenants in id order, ``size`` (1..1000) at a time, after the id ``after``."""
        query = sa.select(tenants).order_by(tenants.c.id).limit(max(1, min(size, MAX_PAGE)))
        if after is not None:
            query = query.where(tenants.c.id > after)
        async with self._connection() as conn:
            result = await conn.execute(query)
            return [_tenant(row) for row in result.mappings()]

    async def update_plan(self, tenant_id: str, plan: str) -> Tenant:
        now = self._clock()
        async with self._transaction() as conn:
            tenant = await self._update(conn, tenant_id, now, plan=plan)
            await _record_terms(conn, tenant, now)
        return tenant

    async def suspend(self, tenant_id: str, reason: str = "") -> Tenant:
        async with self._transaction() as conn:
            return await self._update(
                conn,
                tenant_id,
                self._clock(),
                status=TenantStatus.SUSPENDED.value,
                suspended_reason=reason or None,
            )

    async def resume(self, tenant_id: str) -> Tenant:
        async with self._transaction() as conn:
            return await self._update(
                conn,
                tenant_id,
                self._clock(),
                status=TenantStatus.ACTIVE.value,
                suspended_reason=None,
            )

    async def set_overrides(self, tenant_id: str, document: Tree) -> Tenant:
        """Store the overrides and, like a plan change, record them in ``plan_changes`` so
        billing prorates by the overrides in force at each instant."""
        now = self._clock()
        async with self._transaction() as conn:
            stored = sa.null() if document is None else document
            tenant = await self._update(conn, tenant_id, now, overrides=stored)
            await _record_terms(conn, tenant, now)
        return tenant

    async def _update(
        self, conn: AsyncConnection, tenant_id: str, now: datetime, **values: Any
    ) -> Tenant:
        result = await conn.execute(
            tenants.update()
            .where(tenants.c.id == tenant_id)
            .values(**values, updated_at=now, version=tenants.c.version + 1)
            .returning(*tenants.c)
        )
        row = result.mappings().first()
        if row is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        return _tenant(row)


async def _record_terms(conn: AsyncConnection, tenant: Tenant, now: datetime) -> None:
    """A ``plan_changes`` row: the tenant's plan and overrides from ``now`` on."""
    overrides = tenant.overrides.document if tenant.overrides else sa.null()
    await conn.execute(
        plan_changes.insert().values(
            tenant_id=tenant.id, plan=tenant.plan, effective_at=now, overrides=overrides
        )
    )


@contextlib.contextmanager
def _database_errors() -> Iterator[None]:
    with database_errors("tenant database"):
        try:
            yield
        except IntegrityError as error:
            if "external_id" in str(error.orig):
                raise AlreadyExists("a tenant with this external_id already exists") from None
            raise


def _tenant(row: Mapping[Any, Any]) -> Tenant:
    return Tenant(
        id=row["id"],
        name=row["name"],
        plan=row["plan"],
        status=TenantStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        external_id=row["external_id"],
        stripe_customer_id=row["stripe_customer_id"],
        suspended_reason=row["suspended_reason"],
        version=row["version"],
        overrides=PlanOverride.of(row.get("overrides")),
    )
