"""Read-only tenant queries for the admin listings: keyset pages with filters, plans in use.

Writes stay in ``tenants.py`` (the tenant store); this module only reads the same table.
Pages are ordered by ``(created_at, id)`` and continue strictly after the cursor's row, so
rows added while an operator pages never shift the pages (see ``domain/paging.py``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.paging import MAX_PAGE_SIZE, Cursor
from quotaplane.domain.plans.problems import Tree
from quotaplane.domain.tenants.model import Tenant
from quotaplane.domain.tenants.ports import TenantFilter

# One row mapping and one error translation for the tenants table: the tenant store's.
from quotaplane.storage.sql.access import SqlStore
from quotaplane.storage.sql.tables import tenants
from quotaplane.storage.sql.tenants import _tenant


class SqlTenantQueries(SqlStore):
    """TenantQueries on Postgres or SQLite (SQLAlchemy async)."""

    _what = "tenant database"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list_page(
        self, *, after: Cursor | None, size: int, filters: TenantFilter
    ) -> list[Tenant]:
        query = (
            sa.select(tenants)
            .order_by(tenants.c.created_at, tenants.c.id)
            .limit(max(1, min(size, MAX_PAGE_SIZE + 1)))
        )
        if after is not None:
            query = query.where(
                sa.or_(
                    tenants.c.created_at > after.created_at,
                    sa.and_(tenants.c.created_at == after.created_at, tenants.c.id > after.id),
                )
            )
        if filters.plan is not None:
            query = query.where(tenants.c.plan == filters.plan)
        if filters.status is not None:
            query = query.where(tenants.c.status == filters.status.value)
        async with self._connection() as conn:
            result = await conn.execute(query)
            return [_tenant(row) for row in result.mappings()]

    async def plans_in_use(self) -> set[str]:
        async with self._connection() as conn:
            result = await conn.execute(sa.select(tenants.c.plan).distinct())
            return {row[0] for row in result}

    async def overrides_in_use(self) -> list[tuple[str, str, Tree]]:
        query = sa.select(tenants.c.id, tenants.c.plan, tenants.c.overrides).where(
            tenants.c.overrides.is_not(None)
        )
        async with self._connection() as conn:
            result = await conn.execute(query)
            return [(row.id, row.plan, row.overrides) for row in result]
