"""Postgres for tests: find the server a run uses, start a throwaway one, manage databases.

Discovery order (design.md, "Real components"): ``QUOTAPLANE_TEST_DATABASE_URL`` (a server's
admin database) if set, else the machine's Postgres on 127.0.0.1:5432 (user postgres, database
test) if it accepts a connection, else a throwaway cluster: initdb into a temp dir and run
``postgres`` on a free port, its unix socket inside that dir. initdb refuses to run as root,
so as root the cluster runs as an unprivileged user (setpriv, or runuser).

URLs handed out are SQLAlchemy-neutral: ``postgresql://user@host:port/db``.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.harness.net import free_port
from tests.harness.processes import ManagedProcess

ENV_DATABASE_URL = "QUOTAPLANE_TEST_DATABASE_URL"
MACHINE_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
_UNPRIVILEGED_USERS = ("postgres", "nobody")


class PostgresUnavailable(RuntimeError):
    """No Postgres can be had; ``fatal`` when a configured one is broken (fail, don't skip)."""

    def __init__(self, reason: str, *, fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal


def with_database(url: str, database: str) -> str:
    """``url`` pointing at ``database``, with the driver suffix removed (postgresql://...)."""
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """``url`` with any password masked, for logs and report headers."""
    return make_url(url).render_as_string(hide_password=True)


def connection_error(url: str, timeout: int = 2) -> str | None:
    """None if ``url`` accepts a connection within ``timeout`` seconds, else why not."""
    try:
        with psycopg.connect(with_database(url, _database_of(url)), connect_timeout=timeout):
            return None
    except psycopg.Error as error:
        return " ".join(str(error).split()) or type(error).__name__  # one line for headers


def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE ``name`` (empty, from template0) and return its URL."""
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    with _admin_connection(admin_url) as conn:
        conn.execute(statement)
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE ``name`` WITH (FORCE): also ends sessions a failed test left open."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with _admin_connection(admin_url) as conn:
        conn.execute(statement)


def _admin_connection(admin_url: str) -> psycopg.Connection[tuple[object, ...]]:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    url = with_database(admin_url, _database_of(admin_url))
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def _database_of(url: str) -> str:
    return make_url(url).database or "postgres"


@dataclass
class PostgresServer:
    """The Postgres a test run uses. ``kind`` is "env", "machine" or "throwaway"."""

    kind: str
    admin_url: str
    _throwaway: ThrowawayPostgres | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._throwaway is not None:
            self._throwaway.stop()


def discover_postgres(
    env_url: str | None, machine_url: str = MACHINE_POSTGRES_URL
) -> PostgresServer:
    """The Postgres to use, or PostgresUnavailable with the reason."""
    if env_url:
        error = connection_error(env_url, timeout=5)
        if error is not None:
            raise PostgresUnavailable(
                f"{ENV_DATABASE_URL}={redacted(env_url)} is not reachable: {error}", fatal=True
            )
        return PostgresServer("env", with_database(env_url, _database_of(env_url)))
    machine_error = connection_error(machine_url)
    if machine_error is None:
        return PostgresServer("machine", machine_url)
    throwaway = ThrowawayPostgres()
    try:
        url = throwaway.start()
    except PostgresUnavailable as error:
        raise PostgresUnavailable(
            f"machine Postgres {redacted(machine_url)} unreachable ({machine_error}) "
            f"and no throwaway server: {error.reason}"
        ) from error
    atexit.register(throwaway.stop)  # belt and braces: stop() is idempotent
    return PostgresServer("throwaway", url, throwaway)


def find_postgres_bin_dir() -> Path | None:
    """A directory holding initdb and postgres: from PATH, else /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda path: int(Path(path).parent.name or 0), reverse=True)
    candidates.extend(Path(path) for path in versions)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    return None


class ThrowawayPostgres:
    """A private Postgres cluster in a temp dir, on a free port, removed when stopped."""

    def __init__(self, port: int | None = None, start_timeout: float = 60.0) -> None:
        self.port = port or free_port()
        self._start_timeout = start_timeout
        self._root: Path | None = None
        self._process: ManagedProcess | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """initdb and start the server; return its admin URL."""
        bin_dir = find_postgres_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable("no initdb/postgres on PATH or under /usr/lib/postgresql")
        # A fresh dir directly under the system temp dir: short (the socket path limit) and
        # traversable by the unprivileged user (pytest's own tmp dirs are 0700 root).
        self._root = Path(tempfile.mkdtemp(prefix="qpt-pg-"))
        try:
            run_as = _run_as_unprivileged(self._root)
            self._initdb(bin_dir, run_as)
            self._process = self._server_process(bin_dir, run_as).start()
            self._process.wait_until(
                lambda: connection_error(self.admin_url, timeout=1) is None,
                self._start_timeout,
                f"Postgres on port {self.port} to accept connections",
            )
        except BaseException:
            self.stop()
            raise
        return self.admin_url

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back and disconnect sessions), then delete the cluster."""
        process, self._process = self._process, None
        try:
            if process is not None:
                process.close()
        finally:
            root, self._root = self._root, None
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)

    def _initdb(self, bin_dir: Path, run_as: list[str]) -> None:
        assert self._root is not None
        argv = [*run_as, str(bin_dir / "initdb"), "-D", str(self._root / "data")]
        argv += ["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed ({result.returncode}): {result.stderr[-2000:] or result.stdout}"
            )

    def _server_process(self, bin_dir: Path, run_as: list[str]) -> ManagedProcess:
        assert self._root is not None
        # Durability settings off: a test cluster never has to survive an OS crash.
        settings = ["listen_addresses=127.0.0.1", "fsync=off", "full_page_writes=off"]
        settings += ["synchronous_commit=off", "max_connections=200"]
        argv = [*run_as, str(bin_dir / "postgres"), "-D", str(self._root / "data")]
        argv += ["-p", str(self.port), "-k", str(self._root)]
        for setting in settings:
            argv += ["-c", setting]
        return ManagedProcess(
            argv,
            log_path=self._root / "postgres.log",
            name="postgres",
            stop_signal=signal.SIGINT,
        )


def _run_as_unprivileged(root: Path) -> list[str]:
    """The command prefix that runs initdb/postgres as a non-root user (none if not root)."""
    if os.geteuid() != 0:
        return []
    user = _unprivileged_user()
    os.chown(root, user.pw_uid, user.pw_gid)
    setpriv = shutil.which("setpriv")
    if setpriv:
        # setpriv execs in place, so the pid we hold is the server's own.
        ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
        return [setpriv, *ids, "--"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user.pw_name, "--"]
    raise PostgresUnavailable("running as root and neither setpriv nor runuser is available")


def _unprivileged_user() -> pwd.struct_passwd:
    for name in _UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(f"running as root and none of the users {_UNPRIVILEGED_USERS} exist")
