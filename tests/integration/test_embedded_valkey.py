"""EmbeddedValkey: the private valkey-server `quotaplane serve` starts when no Redis URL is set."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from quotaplane.storage.redis.embedded import EmbeddedValkey, EmbeddedValkeyError
from tests.harness.net import free_port

pytestmark = pytest.mark.timeout(60)


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)


def test_starts_on_a_unix_socket_in_the_data_dir(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as valkey:
        assert valkey.url == f"unix://{tmp_path}/valkey.sock"
        assert _client(valkey.url).ping()


def test_listens_on_no_tcp_port(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as valkey:
        assert _client(valkey.url).config_get("port") == {"port": "0"}


def test_persistence_is_append_only_with_everysec_fsync(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as valkey:
        config = _client(valkey.url).config_get("append*")
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec")


def test_a_key_survives_stop_and_start(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path)
    try:
        _client(valkey.start()).set("usage", "42")
        valkey.stop()
        assert _client(valkey.start()).get("usage") == "42"
    finally:
        valkey.stop()


def test_a_fsynced_key_survives_sigkill_of_the_server(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path)
    try:
        client = _client(valkey.start())
        client.set("usage", "7")
        client.execute_command("WAITAOF", 1, 0, 5000)  # type: ignore[no-untyped-call]  # fsynced
        pid = valkey.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # is_running(), not /proc: the leader shows as a zombie before its threads are gone.
        deadline = time.monotonic() + 10
        while valkey.is_running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _client(valkey.start()).get("usage") == "7"  # start() alone recovers
    finally:
        valkey.stop()


def test_an_over_long_socket_path_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedValkeyError, match=r"longer than the 10[37] the OS allows"):
        EmbeddedValkey(tmp_path / ("d" * 120))


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path)
    valkey.start()
    pid = valkey.pid
    assert pid is not None and _alive(pid)
    valkey.stop()
    assert not _alive(pid)


def test_stop_is_idempotent(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path)
    valkey.stop()  # never started
    valkey.start()
    valkey.stop()
    valkey.stop()
    assert valkey.pid is None


def test_stop_removes_the_socket_file(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as valkey:
        assert valkey.socket_path.exists()
    assert not valkey.socket_path.exists()


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as first:
        second = EmbeddedValkey(tmp_path, start_timeout=0.3)
        with pytest.raises(
            EmbeddedValkeyError, match=f"in use by another valkey-server \\(pid {first.pid}\\)"
        ):
            second.start()
        assert _client(first.url).ping()


def test_a_failed_start_reports_the_server_log(tmp_path: Path) -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        port = occupier.getsockname()[1]
        valkey = EmbeddedValkey(tmp_path, tcp_port=port, start_timeout=10)
        with pytest.raises(
            EmbeddedValkeyError, match=r"(?s)exited with code .*Address already in use"
        ):
            valkey.start()
    assert valkey.pid is None


def test_tcp_mode_serves_on_the_given_port(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedValkey(tmp_path, tcp_port=port) as valkey:
        assert valkey.url == f"redis://127.0.0.1:{port}/0"
        assert _client(valkey.url).ping()


_PARENT_SCRIPT = """
import sys, time
from quotaplane.storage.redis.embedded import EmbeddedValkey
valkey = EmbeddedValkey(sys.argv[1])
valkey.start()
print(valkey.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("setpriv") is None,
    reason="parent-death signal needs Linux and setpriv",
)
def test_the_server_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    server_pid = None
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        assert _wait_gone(server_pid), f"valkey-server {server_pid} outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if server_pid is not None and _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
    # ...and the data dir is free again for the next start.
    with EmbeddedValkey(tmp_path, start_timeout=10) as again:
        assert _client(again.url).ping()
