"""Suite-wide fixtures: the real Redis and Postgres a test run uses, and its private slice.

The fixture names are a contract the whole suite codes against:

- ``redis_url`` (session): URL of the run's Redis server (shared: stay under the prefix).
- ``redis_key_prefix`` (session): ``qpt-<random>``, unique per run; its keys go at the end.
- ``postgres_url`` (session): ``postgresql://user@host:port/quotaplane_test_<random>``, the
  run's own database, empty when the run starts; skips with the reason if no Postgres.
- ``postgres_admin_url`` (session): the server's maintenance database.
- ``fresh_postgres_database`` (function): a factory ``() -> url`` of a new empty database,
  dropped after the test (for migration tests).
- ``ledger_url`` (function, twice): a migrated ledger on SQLite, then on Postgres;
  ``database`` is an engine on it.
- ``sqlite_url`` (function): ``sqlite:///<tmp_path>/ledger.db``.
- ``private_redis`` (function): a throwaway valkey the test may stop, kill and restart.
- ``emulator`` (function): a running Stripe emulator (``tests/fakes``).

Discovery happens once per run, first from the report header, and its result is printed
there; everything the run created is removed at session end, even after failures.
"""

from __future__ import annotations

import asyncio
import atexit
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from tests.fakes.stripe_emulator import StripeEmulator
from tests.harness.postgres_servers import create_database, drop_database
from tests.harness.redis_servers import PrivateRedis
from tests.harness.servers import TestServers

_SERVERS = pytest.StashKey[TestServers]()


def pytest_configure(config: pytest.Config) -> None:
    servers = TestServers()
    config.stash[_SERVERS] = servers
    atexit.register(servers.close)  # belt and braces if sessionfinish never runs


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[_SERVERS].ensure().describe()


def pytest_sessionfinish(session: pytest.Session) -> None:
    servers = session.config.stash.get(_SERVERS, None)
    if servers is not None:
        servers.close()


@pytest.fixture(scope="session")
def test_servers(pytestconfig: pytest.Config) -> TestServers:
    """The run's servers (discovered on first use)."""
    return pytestconfig.stash[_SERVERS].ensure()


@pytest.fixture(scope="session")
def redis_url(test_servers: TestServers) -> str:
    if test_servers.redis is None:
        pytest.fail(f"no Redis for this run: {test_servers.redis_error}")
    return test_servers.redis.url


@pytest.fixture(scope="session")
def redis_key_prefix(test_servers: TestServers) -> str:
    return test_servers.key_prefix


@pytest.fixture(scope="session")
def postgres_admin_url(test_servers: TestServers) -> str:
    _require_postgres(test_servers)
    assert test_servers.postgres is not None
    return test_servers.postgres.admin_url


@pytest.fixture(scope="session")
def postgres_url(test_servers: TestServers) -> str:
    _require_postgres(test_servers)
    assert test_servers.run_database_url is not None
    return test_servers.run_database_url


@pytest.fixture
def fresh_postgres_database(
    test_servers: TestServers, postgres_admin_url: str
) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def create() -> str:
        name = test_servers.new_database_name()
        url = create_database(postgres_admin_url, name)
        created.append(name)
        return url

    try:
        yield create
    finally:
        for name in created:
            drop_database(postgres_admin_url, name)


@pytest.fixture(scope="module")
def migrated_postgres(test_servers: TestServers, postgres_admin_url: str) -> Iterator[str]:
    """A Postgres database of this test module's own, migrated to head, dropped afterwards.

    Per module, not per run: tests that sweep a whole table (the Stripe outbox worker pushes
    every pending row) must not see rows another module left behind.
    """
    name = test_servers.new_database_name()
    url = create_database(postgres_admin_url, name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_database(postgres_admin_url, name)


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A migrated ledger's URL, once a fresh SQLite file and once the module's Postgres."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("migrated_postgres")
        return url
    url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    return url


@pytest.fixture
async def database(ledger_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``ledger_url`` (so: once on SQLite, once on Postgres)."""
    engine = create_async_engine_for(ledger_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "private-redis")
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    """A running Stripe emulator (tests/fakes), stopped after the test."""
    with StripeEmulator() as emu:
        yield emu


def _require_postgres(test_servers: TestServers) -> None:
    error = test_servers.postgres_error
    if error is None:
        return
    if error.fatal:
        pytest.fail(f"Postgres for this run is misconfigured: {error.reason}")
    pytest.skip(f"no Postgres for this run: {error.reason}")
