"""The embedded defaults of a run with no URLs configured: the data directory's lock, a private
valkey and a SQLite ledger migrated to head. ``serve`` and the ``--workers`` supervisor start
them the same way (the supervisor once, for every worker).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from quotaplane.app.datadir import LEDGER_FILE, DataDirLock
from quotaplane.config import ConfigError, Settings
from quotaplane.storage.redis.embedded import EmbeddedValkey
from quotaplane.storage.sql import migrate

log = logging.getLogger(__name__)


def embedded_database_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / LEDGER_FILE).resolve()}"


def existing_ledger_url(settings: Settings) -> str:
    """The ledger a command that reads it works on: the configured one, else the embedded
    SQLite file if it exists. ConfigError otherwise: opening a missing SQLite file would
    create an empty ledger in whatever directory the command ran from."""
    if settings.database_url:
        return settings.database_url
    if not (settings.data_dir / LEDGER_FILE).exists():
        raise ConfigError(
            f"no ledger at {(settings.data_dir / LEDGER_FILE).resolve()} (nothing created); "
            "set QUOTAPLANE_DATABASE_URL or QUOTAPLANE_DATA_DIR"
        )
    return embedded_database_url(settings.data_dir)


def start_embedded(
    settings: Settings, stack: contextlib.ExitStack | contextlib.AsyncExitStack
) -> tuple[str, str]:
    """(Redis URL, ledger URL): the configured ones, else those of the embedded servers, started
    here and registered on ``stack`` to stop. A configured ledger is left as it is."""
    s = settings
    if not (s.redis_url and s.database_url):
        stack.enter_context(DataDirLock(s.data_dir))
    redis_url = s.redis_url or _start_valkey(s.data_dir, stack)
    database_url = s.database_url or embedded_database_url(s.data_dir)
    if not s.database_url:
        migrate.upgrade(database_url)
    return redis_url, database_url


def _start_valkey(data_dir: Path, stack: contextlib.ExitStack | contextlib.AsyncExitStack) -> str:
    valkey = EmbeddedValkey(data_dir / "valkey")
    # Started on the calling (main) thread on purpose: valkey's parent-death signal is tied to
    # the thread that spawned it, and an executor thread may exit before serve does.
    url = valkey.start()
    stack.callback(valkey.stop)
    log.info("embedded valkey started", extra={"url": url})
    return url
