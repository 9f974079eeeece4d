"""Database URLs and engines for the ledger: operator URL in, configured SQLAlchemy engine out.

Operators write ``postgresql://user@host:5432/db``, ``postgres://...`` or ``sqlite:///ledger.db``;
the driver is chosen here (psycopg 3 for Postgres, sync and async; the stdlib sqlite3 or
aiosqlite for SQLite), so no other module spells a driver name.

SQLite connections get the pragmas the ledger relies on (foreign keys, WAL, a busy timeout) and
take the write lock when a transaction starts (``BEGIN IMMEDIATE``): with the stdlib's deferred
``BEGIN`` two writers that both read first deadlock on the lock upgrade, and SQLite answers that
with an immediate SQLITE_BUSY that the busy timeout does not cover. Postgres connections may be
pinned to one schema through ``search_path`` (tests isolate runs that way).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from quotaplane.domain.errors import InvalidArgument

SQLITE_BUSY_TIMEOUT_MS = 5_000
POSTGRES_CONNECT_TIMEOUT_S = 5
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 10
POOL_TIMEOUT_S = 5.0  # bounded: a saturated pool surfaces as an error, not a hung RPC
POOL_RECYCLE_S = 1_800

_POSTGRES_SCHEMES = {"postgresql", "postgres"}
# Drivers an operator may have copied from another tool's config; all mean "the Postgres
# server at this address", and psycopg 3 is the one this build ships.
_POSTGRES_DRIVERS = {"", "psycopg", "psycopg2", "psycopg2cffi", "asyncpg", "pg8000"}
_SQLITE_DRIVERS = {"", "pysqlite", "aiosqlite"}
_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_EXPECTED = "expected postgresql://user@host:5432/db or sqlite:///path/to/ledger.db"


def normalize_database_url(url: str, *, async_: bool) -> str:
    """The SQLAlchemy URL (driver included) for an operator's database URL.

    Raises InvalidArgument naming the scheme for anything else; the message never repeats the
    rest of the URL, which may hold a password.
    """
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        raise InvalidArgument(f"database URL has no recognisable scheme; {_EXPECTED}")
    base, _, driver = scheme.partition("+")
    if base in _POSTGRES_SCHEMES and driver in _POSTGRES_DRIVERS:
        return f"postgresql+psycopg://{rest}"
    if base == "sqlite" and driver in _SQLITE_DRIVERS:
        return f"sqlite+aiosqlite://{rest}" if async_ else f"sqlite://{rest}"
    raise InvalidArgument(f"unsupported database URL scheme {scheme!r}; {_EXPECTED}")


def dialect_of(url: str) -> str:
    """'postgresql' or 'sqlite' for an operator URL (InvalidArgument for anything else)."""
    return normalize_database_url(url, async_=False).partition(":")[0].partition("+")[0]


def create_async_engine_for(url: str, *, schema: str | None = None) -> AsyncEngine:
    """An async engine for the server: pooled, pre-pinged, SQLite pragmas on every connection."""
    sa_url = normalize_database_url(url, async_=True)
    if sa_url.startswith("sqlite"):
        engine = create_async_engine(sa_url, **_sqlite_options(sa_url))
        _install_sqlite_hooks(engine.sync_engine, foreign_keys=True)
        return engine
    return create_async_engine(sa_url, **_postgres_pool_options(), **_postgres_options(schema))


def create_sync_engine_for(
    url: str, *, schema: str | None = None, foreign_keys: bool = True, pooled: bool = True
) -> Engine:
    """A blocking engine, for migrations and tools.

    ``foreign_keys=False`` leaves SQLite's enforcement off, as Alembic's batch mode needs: it
    rebuilds a table by copy-and-drop, and a DROP with enforcement on would fire ON DELETE
    CASCADE into the child tables. ``pooled=False`` opens a connection per checkout (one-shot
    commands that should not leave connections behind).
    """
    sa_url = normalize_database_url(url, async_=False)
    if sa_url.startswith("sqlite"):
        options = _sqlite_options(sa_url) if pooled else {"poolclass": NullPool}
        engine = create_engine(sa_url, **options)
        _install_sqlite_hooks(engine, foreign_keys=foreign_keys)
        return engine
    pool = _postgres_pool_options() if pooled else {"poolclass": NullPool}
    return create_engine(sa_url, **pool, **_postgres_options(schema))


def validate_schema_name(schema: str) -> str:
    """A plain lowercase Postgres identifier, so it can go into search_path unquoted."""
    if not _SCHEMA_RE.fullmatch(schema):
        raise InvalidArgument(
            f"schema {schema[:80]!r} must be a lowercase identifier "
            "(letters, digits and '_', at most 63 characters)"
        )
    return schema


def _postgres_pool_options() -> dict[str, Any]:
    return {
        "pool_size": POOL_SIZE,
        "max_overflow": POOL_MAX_OVERFLOW,
        "pool_timeout": POOL_TIMEOUT_S,
        "pool_recycle": POOL_RECYCLE_S,
        "pool_pre_ping": True,  # a Postgres restart must not fail the next RPC on a dead socket
    }


def _postgres_options(schema: str | None) -> dict[str, Any]:
    connect_args: dict[str, Any] = {
        "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
        "application_name": "quotaplane",
    }
    if schema is not None:
        connect_args["options"] = f"-c search_path={validate_schema_name(schema)}"
    return {"connect_args": connect_args}


def _sqlite_options(sa_url: str) -> dict[str, Any]:
    path = sa_url.partition("://")[2]
    if path in ("", "/", "/:memory:"):
        # An in-memory database lives in one connection: every checkout must share it.
        return {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    return {"pool_size": 5, "max_overflow": 5, "pool_timeout": POOL_TIMEOUT_S}


def _install_sqlite_hooks(engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver, so that "begin" below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
