"""The servers one test run uses, and the run's private slice of them.

``TestServers`` discovers Redis and Postgres once per run (lazily: the first report header or
fixture that asks), then gives the run its own Redis key prefix ``qpt-<random>`` and its own
Postgres database ``quotaplane_test_<random>``, so runs on a shared machine never collide.
``close()`` deletes exactly that slice (never FLUSHALL, never another run's database) and
stops any throwaway server the run started, each step even if an earlier one failed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

from tests.harness.postgres_servers import (
    ENV_DATABASE_URL,
    PostgresServer,
    PostgresUnavailable,
    create_database,
    discover_postgres,
    drop_database,
    redacted,
    with_database,
)
from tests.harness.redis_servers import (
    ENV_REDIS_URL,
    RedisServer,
    delete_keys_with_prefix,
    discover_redis,
    redacted_redis_url,
)

RUN_DATABASE_PREFIX = "quotaplane_test_"
RUN_KEY_PREFIX = "qpt-"


class TestServers:
    """Redis and Postgres for one test run, discovered once and cleaned up at the end."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self.run_id = secrets.token_hex(4)
        self.key_prefix = f"{RUN_KEY_PREFIX}{self.run_id}"
        self.run_database = f"{RUN_DATABASE_PREFIX}{self.run_id}"
        self.redis: RedisServer | None = None
        self.redis_error: str | None = None
        self.postgres: PostgresServer | None = None
        self.postgres_error: PostgresUnavailable | None = None
        self._run_database_url: str | None = None
        self._discovered = False

    def ensure(self) -> TestServers:
        """Discover (and if need be start) the servers and create the run database, once."""
        if not self._discovered:
            self._discovered = True
            environ = os.environ if self._environ is None else self._environ
            self._discover_redis(environ.get(ENV_REDIS_URL))
            self._discover_postgres(environ.get(ENV_DATABASE_URL))
        return self

    @property
    def run_database_url(self) -> str | None:
        """URL of the run's own, initially empty database; None without Postgres."""
        return self._run_database_url

    def new_database_name(self) -> str:
        """A fresh database name inside this run's namespace."""
        return f"{self.run_database}_{secrets.token_hex(3)}"

    def describe(self) -> str:
        """One line for the pytest report header."""
        return f"quotaplane servers: {self._describe_redis()}, {self._describe_postgres()}"

    def close(self) -> None:
        """Delete the run's keys and database, then stop throwaway servers."""
        try:
            self._drop_run_slice()
        finally:
            try:
                if self.redis is not None:
                    self.redis.close()
            finally:
                if self.postgres is not None:
                    self.postgres.close()

    def _discover_redis(self, env_url: str | None) -> None:
        try:
            self.redis = discover_redis(env_url)
        except Exception as error:
            self.redis_error = f"{type(error).__name__}: {error}"

    def _discover_postgres(self, env_url: str | None) -> None:
        try:
            self.postgres = discover_postgres(env_url)
            self._run_database_url = create_database(self.postgres.admin_url, self.run_database)
        except PostgresUnavailable as error:
            self.postgres_error = error
        except Exception as error:
            fatal_reason = f"cannot create the run database: {type(error).__name__}: {error}"
            self.postgres_error = PostgresUnavailable(fatal_reason, fatal=True)

    def _drop_run_slice(self) -> None:
        try:
            if self.redis is not None:
                delete_keys_with_prefix(self.redis.url, self.key_prefix)
        finally:
            if self.postgres is not None and self._run_database_url is not None:
                drop_database(self.postgres.admin_url, self.run_database)
                self._run_database_url = None

    def _describe_redis(self) -> str:
        if self.redis is None:
            return f"redis=none ({self.redis_error})"
        url = redacted_redis_url(self.redis.url)
        return f"redis={self.redis.kind} {url} (key prefix {self.key_prefix})"

    def _describe_postgres(self) -> str:
        if self.postgres is None or self._run_database_url is None:
            reason = self.postgres_error.reason if self.postgres_error else "not discovered"
            return f"postgres=none ({reason})"
        url = with_database(self.postgres.admin_url, self.run_database)
        return f"postgres={self.postgres.kind} {redacted(url)}"
