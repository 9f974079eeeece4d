"""SQL plan versions: every applied plans document in ``plan_versions``, numbered 1, 2, ...

``append`` stores a version as the number after the newest its caller read; two replicas that
append at once collide on the primary key and the loser reads the newest again and decides
again (``PlanAdmin.apply``), so versions stay gapless and a document is never stored twice in
a row. Replicas poll ``changed_since`` on ``applied_at``
(``services/plan_versions.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.plans.ports import PlanVersion, VersionTaken
from quotaplane.storage.sql.access import SqlStore, utc_now
from quotaplane.storage.sql.tables import plan_versions

_NOTE_CHARS = 200
_SOURCE_CHARS = 500


class SqlPlanVersionStore(SqlStore):
    """PlanVersionStore on Postgres or SQLite."""

    _what = "plans ledger"

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def latest(self) -> PlanVersion | None:
        query = sa.select(plan_versions).order_by(plan_versions.c.version.desc()).limit(1)
        return await self._one(query)

    async def get(self, version: int) -> PlanVersion | None:
        return await self._one(sa.select(plan_versions).where(plan_versions.c.version == version))

    async def append(
        self,
        *,
        after: int,
        document: str,
        digest: str,
        source: str,
        applied_by: str,
        note: str = "",
    ) -> PlanVersion:
        row = {
            "version": after + 1,
            "document": document,
            "digest": digest,
            "source": source[:_SOURCE_CHARS],
            "applied_by": applied_by[:64],
            "note": note[:_NOTE_CHARS],
            "applied_at": self._clock(),
        }
        try:
            async with self._transaction() as conn:
                await conn.execute(plan_versions.insert().values(**row))
        except IntegrityError:
            raise VersionTaken(f"plans version {after + 1} exists") from None
        return _version(row)

    async def history(self, *, before: int | None, limit: int) -> list[PlanVersion]:
        query = sa.select(plan_versions).order_by(plan_versions.c.version.desc()).limit(limit)
        if before is not None:
            query = query.where(plan_versions.c.version < before)
        return await self._all(query)

    async def changed_since(self, since: datetime | None) -> list[PlanVersion]:
        if since is None:  # a poller's first load: only the newest version matters
            latest = await self.latest()
            return [latest] if latest is not None else []
        query = sa.select(plan_versions).order_by(plan_versions.c.version)
        return await self._all(query.where(plan_versions.c.applied_at >= since))

    async def _one(self, query: sa.Select[Any]) -> PlanVersion | None:
        rows = await self._all(query)
        return rows[0] if rows else None

    async def _all(self, query: sa.Select[Any]) -> list[PlanVersion]:
        async with self._connection() as conn:
            result = await conn.execute(query)
            return [_version(row) for row in result.mappings()]


def _version(row: Mapping[Any, Any]) -> PlanVersion:
    return PlanVersion(
        version=row["version"],
        document=row["document"],
        digest=row["digest"],
        source=row["source"],
        applied_by=row["applied_by"],
        applied_at=row["applied_at"],
        note=row["note"] or "",
    )
