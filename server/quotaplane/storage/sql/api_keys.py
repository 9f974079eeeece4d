"""SQL API key store: the ``api_keys`` table behind ``ApiKeyStore``.

Rows hold the SHA-256 of the secret (``key_hash``, UNIQUE: the ext_authz lookup), a display
prefix and the dates; never the secret. ``changed_since`` is what the in-process key cache
polls: a key changes when it is created and when it is revoked, so the query is on those two
columns. Database failures become ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.errors import NotFound, Unavailable
from quotaplane.domain.tenants.model import ApiKey
from quotaplane.domain.tenants.ports import KeyGrant
from quotaplane.storage.sql.access import SqlStore, database_errors, utc_now
from quotaplane.storage.sql.tables import api_keys

_PUBLIC_COLUMNS = (
    api_keys.c.id,
    api_keys.c.tenant_id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)
_GRANT_COLUMNS = (
    api_keys.c.id,
    api_keys.c.tenant_id,
    api_keys.c.key_hash,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


class SqlApiKeyStore(SqlStore):
    """ApiKeyStore on Postgres or SQLite (SQLAlchemy async)."""

    _what = "API key database"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        # Unlike the ledger, this store has always answered a constraint failure as Unavailable.
        with database_errors(self._what):
            try:
                yield
            except IntegrityError as error:
                raise Unavailable(f"{self._what} is unavailable: {type(error).__name__}") from None

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def create(self, *, tenant_id: str, name: str, prefix: str, key_hash: str) -> ApiKey:
        row = {
            "id": str(uuid.uuid4()),
            "tenant_id": tenant_id,
            "name": name,
            "prefix": prefix,
            "key_hash": key_hash,
            "created_at": self._clock(),
            "revoked_at": None,
        }
        async with self._transaction() as conn:
            await conn.execute(api_keys.insert().values(**row))
        return _api_key(row)

    async def list_for_tenant(self, tenant_id: str, *, include_revoked: bool) -> list[ApiKey]:
        query = (
            sa.select(*_PUBLIC_COLUMNS)
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.created_at, api_keys.c.id)
        )
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self._connection() as conn:
            result = await conn.execute(query)
            return [_api_key(row) for row in result.mappings()]

    async def revoke(self, key_id: str) -> ApiKey:
        async with self._transaction() as conn:
            result = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
                .returning(*_PUBLIC_COLUMNS)
            )
            row = result.mappings().first()
            if row is None:  # unknown, or revoked before: answer the key as it is
                result = await conn.execute(
                    sa.select(*_PUBLIC_COLUMNS).where(api_keys.c.id == key_id)
                )
                row = result.mappings().first()
        if row is None:
            raise NotFound(f"API key {key_id} does not exist")
        return _api_key(row)

    async def find_by_hash(self, key_hash: str) -> KeyGrant | None:
        query = sa.select(*_GRANT_COLUMNS).where(api_keys.c.key_hash == key_hash)
        async with self._connection() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _grant(row) if row is not None else None

    async def changed_since(self, since: datetime | None) -> list[KeyGrant]:
        query = sa.select(*_GRANT_COLUMNS)
        if since is not None:
            query = query.where(
                sa.or_(api_keys.c.created_at >= since, api_keys.c.revoked_at >= since)
            )
        async with self._connection() as conn:
            result = await conn.execute(query)
            return [_grant(row) for row in result.mappings()]


def _api_key(row: Mapping[Any, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def _grant(row: Mapping[Any, Any]) -> KeyGrant:
    return KeyGrant(
        key_id=row["id"],
        tenant_id=row["tenant_id"],
        key_hash=row["key_hash"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )
