"""Schema migrations of the ledger: upgrade, downgrade, and where a database stands.

Takes the operator's database URL (``postgresql://...`` or ``sqlite:///...``) and drives
Alembic from code: the migration scripts ship inside this package (``migrations/``), no
alembic.ini is read. Each command runs in one transaction on one connection, so a failed
migration leaves the schema as it was (Postgres and SQLite both have transactional DDL).

``schema`` (Postgres only) puts the tables and the version table in that schema, created on
upgrade if missing; tests use it to isolate runs sharing one database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from quotaplane.domain.errors import InvalidArgument
from quotaplane.logs import redact_url
from quotaplane.storage.sql.engine import (
    create_sync_engine_for,
    dialect_of,
    validate_schema_name,
)

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Postgres advisory lock held while migrating ('quotapln' in ASCII; no other code uses it).
MIGRATION_LOCK_KEY = 0x71756F7461706C6E

# Alembic's `context` and `op` are module-level proxies: two commands running at once in one
# process would cross their wires. Across processes (replicas) env.py's advisory lock serializes.
_ALEMBIC_LOCK = threading.Lock()


def head() -> str:
    """The newest revision this build knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    if revision is None:
        raise RuntimeError(f"no migration scripts found in {MIGRATIONS_DIR}")
    return revision


def current(url: str, *, schema: str | None = None) -> str | None:
    """The revision the database at ``url`` is at; None for a database never migrated."""
    with _connection(url, schema) as connection:
        opts = {"version_table_schema": schema} if schema else {}
        return MigrationContext.configure(connection, opts=opts).get_current_revision()


def upgrade(url: str, revision: str = "head", *, schema: str | None = None) -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: this build's head)."""
    with _connection(url, schema, create_schema=True) as connection:
        before = MigrationContext.configure(
            connection, opts={"version_table_schema": schema} if schema else {}
        ).get_current_revision()
        log.info(
            "ledger schema upgrade starting",
            extra={"database": redact_url(url), "from": before, "to": revision},
        )
        with _ALEMBIC_LOCK:
            command.upgrade(_config(connection, schema), revision)
    log.info("ledger schema upgrade done", extra={"database": redact_url(url), "to": revision})


def downgrade(url: str, revision: str, *, schema: str | None = None) -> None:
    """Migrate the database at ``url`` down to ``revision`` ('base' removes every table)."""
    log.info(
        "ledger schema downgrade starting",
        extra={"database": redact_url(url), "to": revision},
    )
    with _connection(url, schema) as connection, _ALEMBIC_LOCK:
        command.downgrade(_config(connection, schema), revision)
    log.info("ledger schema downgrade done", extra={"database": redact_url(url), "to": revision})


def new_revision(message: str) -> None:
    """Write an empty revision script after head, for a developer to fill in by hand."""
    with _ALEMBIC_LOCK:
        command.revision(_config(), message=message)


def _config(connection: Connection | None = None, schema: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    # The connection travels as an attribute, never as an ini option: a URL's '%' would be
    # read as ini interpolation, and a password does not belong in a config object.
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    return config


@contextmanager
def _connection(
    url: str, schema: str | None, *, create_schema: bool = False
) -> Iterator[Connection]:
    if schema is not None:
        validate_schema_name(schema)
        if dialect_of(url) != "postgresql":
            raise InvalidArgument("a schema can only be given for a Postgres database")
    # SQLite foreign keys stay off while migrating: batch mode rebuilds tables by
    # copy-and-drop, and a DROP with enforcement on cascades into child rows.
    engine = create_sync_engine_for(url, schema=schema, foreign_keys=False, pooled=False)
    try:
        with engine.begin() as connection:
            if create_schema and schema is not None:
                connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
            yield connection
    finally:
        engine.dispose()
