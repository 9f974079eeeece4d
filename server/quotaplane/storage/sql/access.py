"""What every SQL store shares: failures mapped to ``Unavailable``, connections and transactions
that apply that mapping, the dialect's INSERT ... ON CONFLICT, and the clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.errors import Unavailable


def utc_now() -> datetime:
    return datetime.now(UTC)


def dialect_insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support for the connection's dialect (Postgres or SQLite)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@contextlib.contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Connection and driver failures -> Unavailable (constraint bugs propagate)."""
    try:
        yield
    except sa.exc.IntegrityError:
        raise
    except (DBAPIError, SQLAlchemyError, OSError) as error:
        raise Unavailable(f"{what} is unavailable: {type(error).__name__}") from None


class SqlStore:
    """Base of a store on one engine: ``_connection``/``_transaction`` map failures through
    ``_errors``, which a store overrides to translate its own constraint violations."""

    _engine: AsyncEngine
    _what = "ledger database"

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return database_errors(self._what)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        with self._errors():
            async with self._engine.connect() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        with self._errors():
            async with self._engine.begin() as conn:
                yield conn
