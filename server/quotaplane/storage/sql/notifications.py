"""SQL NotificationStore: the ``quota_notifications`` outbox of threshold webhooks.

``record`` relies on the UNIQUE (tenant, period, metric, threshold) key: the first replica to
insert wins, later ones are told it exists. ``claim_due`` leases due rows with a conditional
UPDATE on ``next_attempt_at``, so two replicas polling at once never both send one row.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.quota.alerts import PendingNotification, QuotaAlert
from quotaplane.storage.sql.access import SqlStore, dialect_insert
from quotaplane.storage.sql.tables import quota_notifications as qn


class SqlNotificationStore(SqlStore):
    _what = "notification outbox"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record(self, notification_id: str, alert: QuotaAlert) -> bool:
        row = {
            "id": notification_id,
            "tenant_id": alert.tenant_id,
            "period": alert.period,
            "metric": alert.metric,
            "threshold": alert.threshold,
            "used": alert.used,
            "quota": alert.quota,
            "occurred_at": alert.occurred_at,
            "next_attempt_at": alert.occurred_at,
        }
        async with self._transaction() as conn:
            insert = dialect_insert(conn, qn).values(row).on_conflict_do_nothing()
            # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT DO NOTHING.
            inserted = (await conn.execute(insert.returning(qn.c.id))).first()
        return inserted is not None

    async def claim_due(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[PendingNotification]:
        due = (
            sa.select(qn)
            .where(qn.c.delivered_at.is_(None), qn.c.next_attempt_at <= now)
            .order_by(qn.c.next_attempt_at)
            .limit(limit)
        )
        claimed = []
        async with self._transaction() as conn:
            rows = (await conn.execute(due)).mappings().all()
        for row in rows:
            async with self._transaction() as conn:
                taken = await conn.execute(
                    sa.update(qn)
                    .where(qn.c.id == row["id"], qn.c.next_attempt_at == row["next_attempt_at"])
                    .values(next_attempt_at=now + lease)
                )
            if taken.rowcount == 1:
                claimed.append(_pending(row))
        return claimed

    async def delivered(self, notification_id: str, at: datetime) -> None:
        await self._update(notification_id, delivered_at=at, last_error=None)

    async def failed(self, notification_id: str, error: str, retry_at: datetime | None) -> None:
        await self._update(
            notification_id,
            attempts=qn.c.attempts + 1,
            last_error=error,
            next_attempt_at=retry_at,  # None: given up, never due again
        )

    async def _update(self, notification_id: str, **values: Any) -> None:
        async with self._transaction() as conn:
            await conn.execute(sa.update(qn).where(qn.c.id == notification_id).values(**values))

    async def all_for(self, tenant_id: str) -> list[Mapping[Any, Any]]:
        """Every notification row of a tenant (operators' view and tests)."""
        query = sa.select(qn).where(qn.c.tenant_id == tenant_id).order_by(qn.c.occurred_at)
        async with self._connection() as conn:
            return list((await conn.execute(query)).mappings().all())


def _pending(row: Mapping[Any, Any]) -> PendingNotification:
    alert = QuotaAlert(
        tenant_id=row["tenant_id"],
        period=row["period"],
        metric=row["metric"],
        threshold=row["threshold"],
        used=row["used"],
        quota=row["quota"],
        occurred_at=row["occurred_at"],
    )
    return PendingNotification(id=row["id"], alert=alert, attempts=row["attempts"])
