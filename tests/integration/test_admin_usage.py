"""GetUsage's use case on the real ledger (SQLite and Postgres): buckets, totals, bad ranges.

Usage is written through the ledger's own flush API, exactly as the background flush does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.billing.admin import UsageReports, UsageTotal
from quotaplane.domain.billing.ports import HourlyUsage, PendingFlush
from quotaplane.domain.errors import InvalidArgument, NotFound
from quotaplane.domain.windows import Window
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.tenants import SqlTenantStore

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 11, 24, 5, 30, tzinfo=UTC)


def hour(day: int, h: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, h, tzinfo=UTC)


@pytest.fixture
async def tenant_id(database: AsyncEngine) -> str:
    tenant = await SqlTenantStore(database).create(name="Acme", plan="growth")
    rows = [
        HourlyUsage("requests", hour(1, 0), 5),
        HourlyUsage("requests", hour(1, 23), 7),
        HourlyUsage("requests", hour(2, 10), 11),
        HourlyUsage("requests", hour(24, 5), 13),
        HourlyUsage("rating.bulk", hour(2, 10), 100),
        HourlyUsage("requests", hour(30, 23, month=10), 17),
    ]
    flush = PendingFlush(flush_id=str(uuid.uuid4()), tenant_id=tenant.id, usage=tuple(rows))
    assert await SqlUsageLedger(database).apply_flush(flush)
    return tenant.id


@pytest.fixture
def reports(database: AsyncEngine) -> UsageReports:
    return UsageReports(SqlTenantStore(database), SqlUsageLedger(database), clock=lambda: NOW)


async def test_the_default_range_is_this_month_by_hour(
    reports: UsageReports, tenant_id: str
) -> None:
    report = await reports.usage(
        tenant_id=tenant_id, metric="", start=None, end=None, bucket=Window.HOUR
    )
    assert report.metric == "requests" and report.total == 5 + 7 + 11 + 13
    assert report.buckets[0] == UsageTotal(hour(1, 0), hour(1, 1), 5)
    assert [b.quantity for b in report.buckets] == [5, 7, 11, 13]


async def test_day_buckets_sum_their_hours(reports: UsageReports, tenant_id: str) -> None:
    report = await reports.usage(
        tenant_id=tenant_id, metric="requests", start=None, end=None, bucket=Window.DAY
    )
    assert [(b.start, b.end, b.quantity) for b in report.buckets] == [
        (hour(1, 0), hour(2, 0), 12),
        (hour(2, 0), hour(3, 0), 11),
        (hour(24, 0), hour(25, 0), 13),
    ]


async def test_month_buckets_are_calendar_months(reports: UsageReports, tenant_id: str) -> None:
    report = await reports.usage(
        tenant_id=tenant_id,
        metric="requests",
        start=hour(1, 0, month=10),
        end=NOW,
        bucket=Window.MONTH,
    )
    assert [(b.start, b.end, b.quantity) for b in report.buckets] == [
        (hour(1, 0, month=10), hour(1, 0), 17),
        (hour(1, 0), hour(1, 0, month=12), 36),
    ]


async def test_a_metric_is_reported_alone(reports: UsageReports, tenant_id: str) -> None:
    report = await reports.usage(
        tenant_id=tenant_id, metric="rating.bulk", start=None, end=None, bucket=Window.DAY
    )
    assert report.total == 100 and len(report.buckets) == 1


async def test_an_hour_overlapping_the_start_counts(reports: UsageReports, tenant_id: str) -> None:
    report = await reports.usage(
        tenant_id=tenant_id,
        metric="requests",
        start=hour(1, 23) + timedelta(minutes=59),
        end=hour(2, 0),
        bucket=Window.HOUR,
    )
    assert report.total == 7


@pytest.mark.parametrize(
    ("start", "end", "words"),
    [
        (hour(2, 0), hour(1, 0), "must be after start"),
        (hour(2, 0), hour(2, 0), "must be after start"),
        (hour(1, 0, month=1), hour(1, 0, month=3) + timedelta(days=400), "at most 400 days"),
        (datetime(2026, 11, 1), None, "timezone-aware"),
    ],
)
async def test_bad_ranges_are_invalid(
    reports: UsageReports, tenant_id: str, start: datetime, end: datetime | None, words: str
) -> None:
    with pytest.raises(InvalidArgument, match=words):
        await reports.usage(
            tenant_id=tenant_id, metric="", start=start, end=end, bucket=Window.HOUR
        )


async def test_an_unknown_tenant_is_not_found(reports: UsageReports) -> None:
    with pytest.raises(NotFound):
        await reports.usage(
            tenant_id=str(uuid.uuid4()), metric="", start=None, end=None, bucket=Window.DAY
        )


async def test_the_tenants_waiting_usage_is_flushed_first(
    database: AsyncEngine, tenant_id: str
) -> None:
    flushed: list[str] = []

    async def flush(tenant: str) -> int:
        flushed.append(tenant)
        return 0

    reports = UsageReports(
        SqlTenantStore(database), SqlUsageLedger(database), flush=flush, clock=lambda: NOW
    )
    await reports.usage(tenant_id=tenant_id, metric="", start=None, end=None, bucket=Window.DAY)
    assert flushed == [tenant_id]
