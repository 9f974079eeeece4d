"""The test harness hands out working servers, cleans up only what its run made, and
never leaves a process behind."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.harness.net import free_port, tcp_accepts
from tests.harness.postgres_servers import (
    PostgresUnavailable,
    connection_error,
    discover_postgres,
)
from tests.harness.processes import ManagedProcess, ProcessStartError
from tests.harness.redis_servers import (
    PrivateRedis,
    delete_keys_with_prefix,
    discover_redis,
    redis_answers,
)
from tests.harness.servers import TestServers

pytestmark = pytest.mark.timeout(90)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _user_tables(url: str) -> list[str]:
    query = (
        "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
    )
    with psycopg.connect(url, connect_timeout=5) as conn:
        return [row[0] for row in conn.execute(query).fetchall()]


def _database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url, connect_timeout=5) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return found is not None


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _printed(process: ManagedProcess, pattern: str) -> str | None:
    """The line (or first group) the process printed matching ``pattern``, if any."""
    found = re.search(pattern, process.log_tail(), re.MULTILINE)
    return None if found is None else found.group(found.lastindex or 0)


# --- session fixtures -------------------------------------------------------------------


def test_redis_url_answers_ping(redis_url: str) -> None:
    assert redis.Redis.from_url(redis_url, socket_timeout=5).ping()


def test_redis_key_prefix_is_a_run_prefix(redis_key_prefix: str) -> None:
    assert re.fullmatch(r"qpt-[0-9a-f]{8}", redis_key_prefix)


def test_postgres_url_is_the_run_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        (name,) = conn.execute("SELECT current_database()").fetchone() or ("",)
    assert re.fullmatch(r"quotaplane_test_[0-9a-f]{8}", name)
    assert postgres_url.startswith("postgresql://") and postgres_url.endswith(f"/{name}")


def test_postgres_admin_url_is_another_database(postgres_admin_url: str, postgres_url: str) -> None:
    assert connection_error(postgres_admin_url) is None
    assert postgres_admin_url.rsplit("/", 1)[1] != postgres_url.rsplit("/", 1)[1]


def test_fresh_postgres_database_is_new_and_empty(
    fresh_postgres_database: Callable[[], str], postgres_url: str
) -> None:
    first, second = fresh_postgres_database(), fresh_postgres_database()
    assert len({first, second, postgres_url}) == 3
    assert _user_tables(first) == [] and _user_tables(second) == []


def test_sqlite_url_points_into_the_test_tmp_dir(sqlite_url: str, tmp_path: Path) -> None:
    assert sqlite_url == f"sqlite:///{tmp_path}/ledger.db"


# --- a run's lifecycle: its own database and keys, removed at the end ------------------


@pytest.fixture
def run_servers() -> Iterator[TestServers]:
    """A second, independent run's worth of servers (close() is idempotent)."""
    servers = TestServers()
    try:
        servers.ensure()
        if servers.postgres is None or servers.redis is None:
            pytest.skip(f"servers unavailable: {servers.describe()}")
        yield servers
    finally:
        servers.close()


def test_a_run_gets_an_empty_database_that_close_drops(run_servers: TestServers) -> None:
    assert run_servers.postgres is not None and run_servers.run_database_url is not None
    try:
        assert _user_tables(run_servers.run_database_url) == []
    finally:
        run_servers.close()
    assert not _database_exists(run_servers.postgres.admin_url, run_servers.run_database)


def test_close_deletes_the_run_keys_only(run_servers: TestServers, redis_key_prefix: str) -> None:
    assert run_servers.redis is not None
    client = redis.Redis.from_url(run_servers.redis.url, socket_timeout=5)
    neighbour = f"{redis_key_prefix}:neighbour-of-{run_servers.key_prefix}"
    client.set(f"{run_servers.key_prefix}:usage:{{tenant-a}}", 1)
    client.set(neighbour, 1)
    run_servers.close()
    assert client.keys(f"{run_servers.key_prefix}*") == []
    assert client.exists(neighbour) == 1


def test_delete_keys_with_prefix_spares_other_prefixes(
    redis_url: str, redis_key_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    ours, theirs = f"{redis_key_prefix}-cleanup:", f"{redis_key_prefix}-kept:"
    client.mset({f"{ours}{n}": n for n in range(1200)} | {f"{theirs}x": 1})
    assert delete_keys_with_prefix(redis_url, ours) == 1200
    assert client.exists(f"{theirs}x") == 1


def test_delete_keys_with_prefix_refuses_a_glob(redis_url: str) -> None:
    with pytest.raises(ValueError, match="glob-like"):
        delete_keys_with_prefix(redis_url, "qpt-*")


def test_the_report_header_names_both_servers(run_servers: TestServers) -> None:
    try:
        header = run_servers.describe()
    finally:
        run_servers.close()
    assert run_servers.redis is not None and run_servers.postgres is not None
    assert header.startswith(f"quotaplane servers: redis={run_servers.redis.kind} redis")
    assert f", postgres={run_servers.postgres.kind} postgresql://" in header
    assert header.endswith(f"/{run_servers.run_database}")


# --- discovery falls back to throwaway servers -------------------------------------------


def test_redis_discovery_uses_the_configured_url_as_given() -> None:
    assert discover_redis("redis://127.0.0.1:1/5").url == "redis://127.0.0.1:1/5"


def test_redis_discovery_starts_a_throwaway_when_the_machine_redis_is_down() -> None:
    server = discover_redis(None, machine_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert server.kind == "throwaway" and redis_answers(server.url)
    finally:
        server.close()
    assert not redis_answers(server.url)


def test_postgres_discovery_fails_loudly_on_a_broken_configured_url() -> None:
    with pytest.raises(PostgresUnavailable, match="QUOTAPLANE_TEST_DATABASE_URL") as caught:
        discover_postgres(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    assert caught.value.fatal


@pytest.mark.slow
def test_postgres_discovery_starts_a_throwaway_when_the_machine_postgres_is_down() -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    try:
        server = discover_postgres(None, machine_url=closed)
    except PostgresUnavailable as error:
        pytest.skip(f"no throwaway Postgres possible here: {error.reason}")
    try:
        assert server.kind == "throwaway"
        assert connection_error(server.admin_url) is None
    finally:
        server.close()
    assert connection_error(server.admin_url, timeout=1) is not None


# --- private_redis: a Redis a fault test may stop, kill and restart ----------------------


def test_private_redis_is_not_the_shared_server(
    private_redis: PrivateRedis, redis_url: str
) -> None:
    assert private_redis.url != redis_url and redis_answers(private_redis.url)


def test_private_redis_restarts_on_the_same_port_with_its_data(
    private_redis: PrivateRedis,
) -> None:
    url = private_redis.url
    redis.Redis.from_url(url).set("k", "v")
    private_redis.stop()
    assert not redis_answers(url)
    assert private_redis.start() == url
    assert redis.Redis.from_url(url).get("k") == b"v"


def test_private_redis_kill_is_a_crash(private_redis: PrivateRedis) -> None:
    pid = private_redis.pid
    assert pid is not None
    private_redis.kill()
    assert not _alive(pid) and not redis_answers(private_redis.url)


# --- ManagedProcess ----------------------------------------------------------------------

_LISTENER = "import socket,sys,time; s=socket.create_server(('127.0.0.1',int(sys.argv[1])))"
_LISTENER += "; print('listening', flush=True); time.sleep(60)"


def test_managed_process_waits_for_its_port_and_terminates(tmp_path: Path) -> None:
    port = free_port()
    argv = [*_python(_LISTENER), str(port)]
    with ManagedProcess(argv, log_path=tmp_path / "listener.log") as process:
        process.wait_for_port(port, timeout=20)
        pid = process.pid
        assert process.terminate() == -signal.SIGTERM
    assert pid is not None and not _alive(pid) and not tcp_accepts(port)
    assert "listening" in (tmp_path / "listener.log").read_text()


def test_an_early_exit_raises_with_the_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('\\n'.join(f'line {n}' for n in range(100))); sys.exit(3)"
    process = ManagedProcess(_python(code), log_path=tmp_path / "p.log")
    with process, pytest.raises(ProcessStartError, match=r"(?s)code 3.*line 99") as caught:
        process.wait_for_port(free_port(), timeout=20)
    assert "line 59\n" not in str(caught.value)  # only the last 40 lines


def test_a_readiness_timeout_raises(tmp_path: Path) -> None:
    with ManagedProcess(_python("import time; time.sleep(60)"), log_path=tmp_path / "p.log") as p:
        started = time.monotonic()
        with pytest.raises(ProcessStartError, match=r"within 0\.3s"):
            p.wait_until(lambda: False, timeout=0.3, what="never")
        assert time.monotonic() - started < 5


def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    code += "; print('ready', flush=True); time.sleep(60)"
    process = ManagedProcess(_python(code), log_path=tmp_path / "p.log", stop_timeout=0.5)
    with process:
        process.wait_until(lambda: _printed(process, r"^ready$") is not None, timeout=20)
        assert process.terminate() == -signal.SIGKILL


def test_close_sweeps_children_left_in_the_process_group(tmp_path: Path) -> None:
    code = "import subprocess,sys,time; c=subprocess.Popen(['sleep','60'])"
    code += "; print('child-pid=%d' % c.pid, flush=True); time.sleep(60)"
    process = ManagedProcess(_python(code), log_path=tmp_path / "p.log")
    with process:
        process.wait_until(lambda: _printed(process, r"^child-pid=(\d+)$") is not None, timeout=20)
        child = int(_printed(process, r"^child-pid=(\d+)$") or 0)
        assert process.kill() == -signal.SIGKILL and _alive(child)  # kill: main process only
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_env_is_passed_to_the_process(tmp_path: Path) -> None:
    code = "import os; print('value=' + os.environ['QP_HARNESS_PROBE'], flush=True)"
    process = ManagedProcess(
        _python(code), log_path=tmp_path / "p.log", env={"QP_HARNESS_PROBE": "42"}
    )
    with process:
        assert process.wait(timeout=20) == 0
    assert "value=42" in process.log_tail()


def test_start_while_running_is_a_no_op_and_after_a_stop_restarts(tmp_path: Path) -> None:
    process = ManagedProcess(_python("import time; time.sleep(60)"), log_path=tmp_path / "p.log")
    with process:
        first = process.pid
        assert process.start().pid == first
        process.terminate()
        assert process.start().pid != first and process.is_running()
    assert process.log_tail().count("--- start:") == 2
