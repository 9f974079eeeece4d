"""Alembic environment for the ledger, configured from code (no alembic.ini).

``quotaplane.storage.sql.migrate`` opens the connection and hands it over in
``config.attributes["connection"]``; this file only configures the migration context on it.
SQLite gets ``render_as_batch`` (it alters tables by copy-and-swap) and transactional DDL
(the engine begins every transaction itself, so DDL is rolled back when a migration fails).
On Postgres an advisory lock serializes replicas that migrate at the same moment.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from quotaplane.storage.sql.migrate import MIGRATION_LOCK_KEY
from quotaplane.storage.sql.tables import metadata


def run_migrations(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=is_sqlite,
        transactional_ddl=True,
        compare_type=True,
        version_table_schema=context.config.attributes.get("schema"),
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            context.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "run migrations through quotaplane.storage.sql.migrate (or `quotaplane db upgrade`), "
            "which supplies the database connection"
        )
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported")
    run_migrations(connection)


main()
