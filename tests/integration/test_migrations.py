"""The ledger schema on real SQLite and Postgres: migrations, drift against tables.py, constraints.

Every test runs on both dialects: a SQLite file in the test's tmp dir, and a new empty
Postgres database per test (``fresh_postgres_database``, dropped afterwards).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.storage.sql import migrate
from quotaplane.storage.sql import tables as t
from quotaplane.storage.sql.engine import create_async_engine_for, create_sync_engine_for

pytestmark = pytest.mark.timeout(90)

NOW = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    """URL of an empty ledger database, once per dialect."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return url
    create: Callable[[], str] = request.getfixturevalue("fresh_postgres_database")
    return create()


@pytest.fixture
def migrated_url(empty_url: str) -> str:
    migrate.upgrade(empty_url)
    return empty_url


@pytest.fixture
async def ledger(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine_for(migrated_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def _schema_differences(url: str, metadata: sa.MetaData) -> list[Any]:
    engine = create_sync_engine_for(url, pooled=False)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _table_names(url: str) -> set[str]:
    engine = create_sync_engine_for(url, pooled=False)
    try:
        with engine.connect() as connection:
            return set(sa.inspect(connection).get_table_names())
    finally:
        engine.dispose()


# -- migrations --------------------------------------------------------------------------


def test_new_database_has_no_revision(empty_url: str) -> None:
    assert migrate.current(empty_url) is None


def test_upgrade_reaches_head(migrated_url: str) -> None:
    assert migrate.current(migrated_url) == migrate.head()


def test_downgrade_to_base_removes_every_ledger_table(migrated_url: str) -> None:
    migrate.downgrade(migrated_url, "base")
    assert migrate.current(migrated_url) is None
    assert _table_names(migrated_url) - {"alembic_version"} == set()


def test_upgrade_after_downgrade_rebuilds_the_same_schema(migrated_url: str) -> None:
    migrate.downgrade(migrated_url, "base")
    migrate.upgrade(migrated_url)
    assert migrate.current(migrated_url) == migrate.head()
    assert _schema_differences(migrated_url, t.metadata) == []


def test_upgrade_at_head_is_a_no_op(migrated_url: str) -> None:
    migrate.upgrade(migrated_url)
    assert migrate.current(migrated_url) == migrate.head()


def test_migrations_match_tables_py(migrated_url: str) -> None:
    assert _schema_differences(migrated_url, t.metadata) == []


def test_schema_comparison_notices_drift(migrated_url: str) -> None:
    drifted = sa.MetaData(naming_convention=t.NAMING_CONVENTION)
    for table in t.metadata.sorted_tables:
        table.to_metadata(drifted)
    sa.Table("tenants", drifted, sa.Column("region", sa.String(8)), extend_existing=True)
    differences = _schema_differences(migrated_url, drifted)
    assert [diff[0] for diff in differences] == ["add_column"]


def test_upgrade_logs_progress(empty_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="quotaplane.storage.sql.migrate"):
        migrate.upgrade(empty_url)
    messages = [r.getMessage() for r in caplog.records if r.name == migrate.log.name]
    assert messages == ["ledger schema upgrade starting", "ledger schema upgrade done"]


@pytest.mark.postgres
def test_postgres_schema_keeps_tables_and_version_apart(
    fresh_postgres_database: Callable[[], str],
) -> None:
    url = fresh_postgres_database()
    migrate.upgrade(url, schema="ledger_a")
    assert (migrate.current(url, schema="ledger_a"), migrate.current(url)) == (
        migrate.head(),
        None,
    )
    assert _table_names(url) == set()  # nothing landed in public


@pytest.mark.postgres
def test_postgres_upgrade_waits_for_a_migration_in_progress(
    fresh_postgres_database: Callable[[], str],
) -> None:
    url = fresh_postgres_database()
    with psycopg.connect(url, autocommit=True) as other_replica:
        other_replica.execute("SELECT pg_advisory_lock(%s)", (migrate.MIGRATION_LOCK_KEY,))
        worker = threading.Thread(target=migrate.upgrade, args=(url,))
        worker.start()
        worker.join(timeout=1.0)
        waited = worker.is_alive()
        other_replica.execute("SELECT pg_advisory_unlock(%s)", (migrate.MIGRATION_LOCK_KEY,))
    worker.join(timeout=30)
    assert waited
    assert migrate.current(url) == migrate.head()


# -- constraints the ledger's idempotency rests on -----------------------------------------


async def _add_tenant(connection: AsyncConnection) -> str:
    tenant_id = str(uuid.uuid4())
    await connection.execute(
        t.tenants.insert().values(
            id=tenant_id, name="acme", plan="growth", created_at=NOW, updated_at=NOW
        )
    )
    return tenant_id


def _invoice(tenant_id: str, version: int, status: str = "draft") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "period": "2026-11",
        "version": version,
        "status": status,
        "currency": "USD",
        "subtotal": Decimal("0.52"),
        "total": Decimal("0.52"),
        "total_minor": 52,
        "created_at": NOW,
        "updated_at": NOW,
    }


async def test_second_open_invoice_for_a_period_is_refused(ledger: AsyncEngine) -> None:
    async with ledger.begin() as connection:
        tenant_id = await _add_tenant(connection)
        await connection.execute(t.invoices.insert().values(_invoice(tenant_id, 1)))
    with pytest.raises(sa.exc.IntegrityError):
        async with ledger.begin() as connection:
            await connection.execute(t.invoices.insert().values(_invoice(tenant_id, 2)))


async def test_new_invoice_version_is_allowed_after_voiding(ledger: AsyncEngine) -> None:
    async with ledger.begin() as connection:
        tenant_id = await _add_tenant(connection)
        first = _invoice(tenant_id, 1)
        await connection.execute(t.invoices.insert().values(first))
        await connection.execute(
            t.invoices.update().where(t.invoices.c.id == first["id"]).values(status="void")
        )
        second = _invoice(tenant_id, 2) | {"replaces_invoice_id": first["id"]}
        await connection.execute(t.invoices.insert().values(second))
        count = await connection.scalar(sa.select(sa.func.count()).select_from(t.invoices))
    assert count == 2


async def test_duplicate_usage_event_is_refused(ledger: AsyncEngine) -> None:
    async with ledger.begin() as connection:
        tenant_id = await _add_tenant(connection)
    event = {
        "tenant_id": tenant_id,
        "event_id": "evt-1",
        "metric": "requests",
        "quantity": 3,
        "occurred_at": NOW,
        "received_at": NOW,
    }
    async with ledger.begin() as connection:
        await connection.execute(t.usage_events.insert().values(event))
    with pytest.raises(sa.exc.IntegrityError):
        async with ledger.begin() as connection:
            await connection.execute(t.usage_events.insert().values(event | {"quantity": 5}))


async def test_foreign_keys_are_enforced(ledger: AsyncEngine) -> None:
    key = {
        "id": str(uuid.uuid4()),
        "tenant_id": str(uuid.uuid4()),
        "name": "k",
        "prefix": "qp_live_abcd",
        "key_hash": "0" * 64,
        "created_at": NOW,
    }
    with pytest.raises(sa.exc.IntegrityError):
        async with ledger.begin() as connection:
            await connection.execute(t.api_keys.insert().values(key))


async def test_sqlite_connections_use_wal(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    engine = create_async_engine_for(sqlite_url)
    try:
        async with engine.connect() as connection:
            mode = await connection.scalar(sa.text("PRAGMA journal_mode"))
    finally:
        await engine.dispose()
    assert mode == "wal"


# -- column types: exact money, aware timestamps ------------------------------------------


async def test_money_and_timestamps_round_trip_exactly(ledger: AsyncEngine) -> None:
    zoned = datetime(2026, 11, 24, 14, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    invoice = _invoice("", 1) | {
        "total": Decimal("1234567890123456.7891"),
        "created_at": zoned,
    }
    async with ledger.begin() as connection:
        invoice["tenant_id"] = await _add_tenant(connection)
        await connection.execute(t.invoices.insert().values(invoice))
        row = (await connection.execute(sa.select(t.invoices))).one()
    assert (row.total, row.subtotal) == (Decimal("1234567890123456.7891"), Decimal("0.5200"))
    assert row.created_at == zoned and row.created_at.tzinfo == UTC


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.52, TypeError),
        (Decimal("0.12345"), ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal(10) ** 20, ValueError),
    ],
)
async def test_money_that_does_not_fit_is_refused_not_rounded(
    ledger: AsyncEngine, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(sa.exc.StatementError) as caught:
        async with ledger.begin() as connection:
            tenant_id = await _add_tenant(connection)
            row = _invoice(tenant_id, 1) | {"total": value}
            await connection.execute(t.invoices.insert().values(row))
    assert isinstance(caught.value.orig, error)


async def test_naive_timestamps_are_refused(ledger: AsyncEngine) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        async with ledger.begin() as connection:
            await connection.execute(
                t.usage_flushes.insert().values(flush_id="f1", applied_at=datetime(2026, 11, 1))
            )
