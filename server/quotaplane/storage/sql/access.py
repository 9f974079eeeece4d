"""What every SQL store shares: failures mapped to ``Unavailable``, connections and transactions
that apply that mapping, the dialect's INSERT ... ON CONFLICT, and the clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.errors import Unavailable

Job = TypeVar("Job")


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

    async def _lease_each(
        self,
        due: sa.Select[Any],
        lease: Callable[[str, datetime], Awaitable[Job | None]],
    ) -> list[Job]:
        """The jobs of an outbox: ``due`` selects the rows' ``id`` and ``next_attempt_at``, then
        ``lease`` claims each alone (fenced on the ``next_attempt_at`` read); a row another
        worker leased in between is skipped."""
        async with self._transaction() as conn:
            rows = (await conn.execute(due)).all()
        jobs = []
        for row in rows:
            job = await lease(row.id, row.next_attempt_at)
            if job is not None:
                jobs.append(job)
        return jobs
