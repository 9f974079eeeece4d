"""The period close: replicas close a period exactly once, a crashed run resumes, the CLI.

Every replica runs the close loop with a clock the test controls (stopped one second after
October 2026 ended plus the hour of grace); the ledger is real (SQLite and Postgres, a fresh
database per test), Redis is the run's. Usage is in the ledger already (what the flush put
there); one tenant's October was force-finalized early, and usage arrived after it (late
usage), so the close must also create its supplementary invoice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.app.billing_close import close_period
from quotaplane.app.billing_parts import CloseOptions
from quotaplane.domain.billing.events import UsageEvent
from quotaplane.domain.billing.pricing import BASE_FEE
from quotaplane.domain.windows import Period
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.tables import (
    billing_close_runs,
    billing_close_tenants,
    invoice_lines,
    invoices,
    stripe_outbox,
    usage_hourly,
)
from quotaplane.storage.sql.tenants import SqlTenantStore
from tests.integration.billing_server import PLANS, BillingServer, billing_server

pytestmark = pytest.mark.timeout(120)

OCTOBER = Period(2026, 10)
NOW = datetime(2026, 11, 1, 1, 0, 1, tzinfo=UTC)  # October's end + 1 h grace + 1 s
ROOT = Path(__file__).resolve().parents[2]
GRACE = {"billing_grace": timedelta(hours=1)}
Starter = Callable[..., Awaitable[BillingServer]]
CLOSE_LOG = "quotaplane.services.period_close"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated ledger of this test's own: the close sweeps every tenant."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        create: Callable[[], str] = request.getfixturevalue("fresh_postgres_database")
        url = create()
    migrate.upgrade(url)
    return url


@pytest.fixture
async def engine(ledger: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine_for(ledger)
    try:
        yield engine
    finally:
        await engine.dispose()


@dataclass
class October:
    billed: dict[str, int]  # tenant -> October units, for every tenant the close bills
    unbilled: list[str]  # no usage and no base fee, or created after October
    late_tenant: str  # finalized early by force, with usage after that


async def _october(engine: AsyncEngine, server: BillingServer) -> October:
    store = SqlTenantStore(engine, clock=lambda: datetime(2026, 9, 1, tzinfo=UTC))
    usage = SqlUsageLedger(engine)
    billed: dict[str, int] = {}
    for i in range(6):
        tenant = (await store.create(name=f"october-{i}", plan="growth")).id
        units = 1_000 * (i + 1) + 7
        at = datetime(2026, 10, 1 + i, 12, tzinfo=UTC)
        await usage.record_events([UsageEvent(f"e{i}", tenant, "requests", units, at)])
        billed[tenant] = units
    pro = (await store.create(name="base-fee-only", plan="pro")).id
    billed[pro] = 0
    idle = (await store.create(name="idle", plan="starter")).id
    later = SqlTenantStore(engine, clock=lambda: datetime(2026, 11, 1, 0, 30, tzinfo=UTC))
    newcomer = (await later.create(name="newcomer", plan="pro")).id
    late = (await store.create(name="late", plan="growth")).id
    await usage.record_events([UsageEvent("l1", late, "requests", 500, OCTOBER.start)])
    first = await server.invoice(late, str(OCTOBER), finalize=True, force=True)
    assert first.total == "0.04"
    await _late_usage(engine, late, 2_000)
    billed[late] = 2_500
    return October(billed, [idle, newcomer], late)


async def _late_usage(engine: AsyncEngine, tenant: str, units: int) -> None:
    """Usage the flush applied after the tenant's invoice froze (RecordUsage refuses it)."""
    at = datetime(2026, 10, 30, 23, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.execute(
            usage_hourly.insert().values(
                tenant_id=tenant, metric="requests", hour_start=at, quantity=units, overage=0
            )
        )


async def _invoices(engine: AsyncEngine) -> dict[str, list[tuple[str, str, int, int]]]:
    """tenant -> [(id, status, supplement, usage units)] of October's invoices not void."""
    units = (
        sa.select(sa.func.coalesce(sa.func.sum(invoice_lines.c.quantity), 0))
        .where(invoice_lines.c.invoice_id == invoices.c.id, invoice_lines.c.metric != BASE_FEE)
        .scalar_subquery()
    )
    query = (
        sa.select(
            invoices.c.tenant_id, invoices.c.id, invoices.c.status, invoices.c.supplement, units
        )
        .where(invoices.c.period == str(OCTOBER), invoices.c.status != "void")
        .order_by(invoices.c.tenant_id, invoices.c.supplement)
    )
    found: dict[str, list[tuple[str, str, int, int]]] = {}
    async with engine.connect() as conn:
        for row in await conn.execute(query):
            found.setdefault(row[0], []).append((row[1], row[2], row[3], int(row[4])))
    return found


async def _run_state(engine: AsyncEngine) -> tuple[str, int] | None:
    query = sa.select(billing_close_runs.c.state, billing_close_runs.c.run)
    async with engine.connect() as conn:
        row = (await conn.execute(query.where(billing_close_runs.c.period == "2026-10"))).first()
    return None if row is None else (row.state, row.run)


async def _recorded(engine: AsyncEngine) -> list[str]:
    query = sa.select(billing_close_tenants.c.tenant_id).where(
        billing_close_tenants.c.period == "2026-10"
    )
    async with engine.connect() as conn:
        return [row.tenant_id for row in await conn.execute(query)]


async def _until_done(engine: AsyncEngine, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while await _run_state(engine) != ("done", 1):
        assert time.monotonic() < deadline, f"the close did not finish: {await _run_state(engine)}"
        await asyncio.sleep(0.1)


def _assert_exactly_once(
    october: October, found: dict[str, list[tuple[str, str, int, int]]]
) -> None:
    assert set(found) == set(october.billed)  # nobody else got an invoice
    for tenant, units in october.billed.items():
        rows = found[tenant]
        assert {status for _, status, _, _ in rows} == {"finalized"}
        assert sum(u for *_, u in rows) == units  # the invoices carry the ledger's units
        expected = [0, 1] if tenant == october.late_tenant else [0]
        assert [supplement for _, _, supplement, _ in rows] == expected


@pytest.fixture
async def stack(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, ledger: str
) -> AsyncIterator[Starter]:
    """Starts replicas on the shared ledger and Redis prefix; all stopped at the end."""
    prefix = f"{redis_key_prefix}:close{uuid.uuid4().hex[:6]}"
    async with AsyncExitStack() as replicas:

        async def start(
            name: str, close: CloseOptions | None, **overrides: object
        ) -> BillingServer:
            home = tmp_path / name
            home.mkdir()
            return await replicas.enter_async_context(
                billing_server(
                    home,
                    redis_url=redis_url,
                    key_prefix=redis_key_prefix,
                    database_url=ledger,
                    redis_key_prefix=prefix,
                    close=close,
                    **overrides,
                )
            )

        yield start


async def test_two_replicas_close_each_tenant_once_and_a_second_run_changes_nothing(
    engine: AsyncEngine, stack: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    setup = await stack("setup", None)
    october = await _october(engine, setup)
    clock = CloseOptions(clock=lambda: NOW)
    with caplog.at_level(logging.INFO, logger=CLOSE_LOG):
        replicas = await asyncio.gather(stack("a", clock, **GRACE), stack("b", clock, **GRACE))
        await _until_done(engine)
    closed = await _invoices(engine)
    _assert_exactly_once(october, closed)
    assert sorted(await _recorded(engine)) == sorted(october.billed)
    tenant_lines = [r for r in caplog.records if r.getMessage() == "period close: tenant closed"]
    assert sorted(getattr(r, "tenant_id", "") for r in tenant_lines) == sorted(october.billed)
    assert [r.getMessage() for r in caplog.records].count("period close done") == 1
    scraped = [replica.runtime.telemetry.scrape() for replica in replicas]
    assert sum(_sample(text, "quotaplane_billing_close_invoices_total") for text in scraped) == 8
    assert (
        max(
            _sample(text, "quotaplane_billing_close_last_period_end_timestamp_seconds")
            for text in scraped
        )
        == OCTOBER.end.timestamp()
    )
    # A replica started days later finds the period done: its first tick changes nothing.
    await stack("c", CloseOptions(clock=lambda: NOW + timedelta(days=3)), **GRACE)
    await asyncio.sleep(0.5)
    assert await _invoices(engine) == closed
    assert await _run_state(engine) == ("done", 1)


def _sample(scraped: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus scrape (0 when absent)."""
    for line in scraped.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_a_replica_killed_mid_run_is_resumed_by_another(
    engine: AsyncEngine,
    stack: Starter,
    ledger: str,
    redis_url: str,
    redis_key_prefix: str,
    tmp_path: Path,
) -> None:
    setup = await stack("setup", None)
    october = await _october(engine, setup)
    plans = tmp_path / "replica-plans.yaml"
    plans.write_text(PLANS)
    env = {
        **os.environ,
        "QUOTAPLANE_DATABASE_URL": ledger,
        "QUOTAPLANE_REDIS_URL": redis_url,
        "QUOTAPLANE_REDIS_KEY_PREFIX": setup.runtime.settings.redis_key_prefix,
        "QUOTAPLANE_PLANS": str(plans),
        "QUOTAPLANE_DATA_DIR": str(tmp_path / "replica-data"),
    }
    replica = _start_replica(env)
    try:
        deadline = time.monotonic() + 60
        while len(await _recorded(engine)) < 3:
            assert replica.poll() is None, "the replica ended before it was killed"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        replica.send_signal(signal.SIGKILL)
        replica.wait(10)
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait(10)
    before = set(await _recorded(engine))
    assert await _run_state(engine) == ("running", 1)  # its lease is still on the run
    resumed: list[str] = []

    async def note(tenant_id: str) -> None:
        resumed.append(tenant_id)

    after_lease = CloseOptions(clock=lambda: NOW + timedelta(seconds=31), on_tenant=note)
    await stack("b", after_lease, **GRACE)
    await _until_done(engine)
    assert set(resumed) == set(october.billed) - before  # resumed after the last one recorded
    _assert_exactly_once(october, await _invoices(engine))


def _start_replica(env: dict[str, str]) -> subprocess.Popen[str]:
    """The close in a process of its own, 0.4 s per tenant: slow enough to kill mid-run."""
    argv = ["-m", "tests.integration.period_close_replica", "2026-10", NOW.isoformat(), "0.4"]
    return subprocess.Popen(
        [sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quotaplane.cli.main", "billing", "close", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_cli_dry_run_changes_nothing_and_the_run_prints_each_tenant(
    engine: AsyncEngine, stack: Starter, ledger: str, redis_url: str, tmp_path: Path
) -> None:
    setup = await stack("setup", None)
    october = await _october(engine, setup)
    plans = tmp_path / "cli-plans.yaml"
    plans.write_text(PLANS)
    env = {
        **os.environ,
        "QUOTAPLANE_DATABASE_URL": ledger,
        "QUOTAPLANE_REDIS_URL": redis_url,
        "QUOTAPLANE_REDIS_KEY_PREFIX": setup.runtime.settings.redis_key_prefix,
        "QUOTAPLANE_PLANS": str(plans),
    }
    before = await _invoices(engine)
    dry = await asyncio.to_thread(_cli, env, "2026-10", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert await _invoices(engine) == before
    assert await _run_state(engine) is None
    for tenant in october.billed:
        assert tenant in dry.stdout
    assert f"{october.late_tenant}" in dry.stdout and "late usage 2,000 requests" in dry.stdout
    real = await asyncio.to_thread(_cli, env, "2026-10")
    assert real.returncode == 0, real.stderr
    lines = {
        line.split()[0]: line
        for line in real.stdout.splitlines()
        if not line.startswith("2026-10:")
    }
    assert set(lines) == set(october.billed)
    assert all(" closed " in line for line in lines.values())
    assert "2026-10: run 1 done, 8 tenant(s), 8 closed, 8 invoice(s) finalized" in real.stdout
    closed = await _invoices(engine)
    _assert_exactly_once(october, closed)
    again = await asyncio.to_thread(_cli, env, "2026-10")
    assert again.returncode == 0, again.stderr
    assert "run 2 done, 8 tenant(s), 0 closed, 0 invoice(s) finalized" in again.stdout
    assert await _invoices(engine) == closed


def test_the_cli_refuses_an_open_period() -> None:
    this_month = datetime.now(UTC).strftime("%Y-%m")
    result = _cli(dict(os.environ), this_month)
    assert result.returncode == 1
    assert "still open" in result.stderr


async def test_with_stripe_configured_every_invoice_of_the_period_is_queued_once(
    engine: AsyncEngine, stack: Starter, ledger: str, tmp_path: Path
) -> None:
    setup = await stack("setup", None)
    october = await _october(engine, setup)
    plans = tmp_path / "stripe-plans.yaml"
    plans.write_text(PLANS)
    settings = dataclasses.replace(
        setup.runtime.settings, stripe_api_key="sk_test_period_close", plans_path=plans
    )
    options = CloseOptions(clock=lambda: NOW)
    for _ in range(2):  # a second run queues nothing twice
        report = await close_period(settings, OCTOBER, dry_run=False, options=options)
        assert report.status == "done"
    queued = sa.select(stripe_outbox.c.invoice_id)
    async with engine.connect() as conn:
        rows = [row.invoice_id for row in await conn.execute(queued)]
    invoices_of_october = [i for rows_ in (await _invoices(engine)).values() for i, *_ in rows_]
    assert sorted(rows) == sorted(invoices_of_october)
    assert len(rows) == len(october.billed) + 1  # the late tenant has two


async def test_a_tenant_that_cannot_be_closed_keeps_the_run_open_for_a_retry(
    engine: AsyncEngine, stack: Starter, tmp_path: Path
) -> None:
    setup = await stack("setup", None)
    october = await _october(engine, setup)
    store = SqlTenantStore(engine, clock=lambda: datetime(2026, 9, 1, tzinfo=UTC))
    orphan = (await store.create(name="orphan", plan="retired")).id  # not in the plans file
    plans = tmp_path / "retry-plans.yaml"
    plans.write_text(PLANS)
    settings = dataclasses.replace(setup.runtime.settings, plans_path=plans)
    options = CloseOptions(clock=lambda: NOW)
    report = await close_period(settings, OCTOBER, dry_run=False, options=options)
    assert report.status == "incomplete"
    failed = [t for t in report.tenants if t.tenant_id == orphan]
    assert [t.outcome for t in failed] == ["failed"] and "retired" in failed[0].detail
    assert await _run_state(engine) == ("running", 1)  # open: the next check retries
    assert sorted(await _recorded(engine)) == sorted(october.billed)  # the others are closed
    _assert_exactly_once(october, await _invoices(engine))
    retried = await close_period(settings, OCTOBER, dry_run=False, options=options)
    assert (retried.status, retried.run) == ("incomplete", 1)  # the same run, continued
    assert [t.tenant_id for t in retried.tenants] == [orphan]  # only what was left
