"""`quotaplane db upgrade --wait`: what compose's migrate runs while Postgres finishes its first
start. The database's port opens only after the command has started; it retries, then migrates.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.harness.net import free_port

pytestmark = pytest.mark.timeout(90)
BIN = Path(sys.executable).parent


class LateForwarder:
    """A TCP port that starts forwarding to ``upstream`` only when ``open()`` is called."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._closed = threading.Event()

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection(self.upstream, timeout=10)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()


@pytest.fixture
def late_postgres(
    fresh_postgres_database: Callable[[], str],
) -> Iterator[tuple[str, LateForwarder]]:
    url = urlsplit(fresh_postgres_database())
    forwarder = LateForwarder((url.hostname or "127.0.0.1", url.port or 5432))
    late = url._replace(netloc=f"{url.username}@127.0.0.1:{forwarder.port}").geturl()
    try:
        yield late, forwarder
    finally:
        forwarder.close()


def test_db_upgrade_waits_for_a_database_that_starts_late(
    late_postgres: tuple[str, LateForwarder],
) -> None:
    url, forwarder = late_postgres
    argv = [str(BIN / "quotaplane"), "db", "--database-url", url, "upgrade", "--wait", "60"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    pipe, stderr = process.stderr, []
    reader = threading.Thread(target=lambda: stderr.extend(iter(pipe.readline, "")))
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any("retrying" in line for line in stderr):  # refused at least once
            assert process.poll() is None and time.monotonic() < deadline, stderr
            time.sleep(0.1)
        forwarder.open()
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
    assert process.returncode == 0, "".join(stderr)
    assert "schema revision:" in out and "none" not in out.split("schema revision:")[1]


def test_db_upgrade_gives_up_after_the_wait_with_one_clear_line() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    done = subprocess.run(
        [str(BIN / "quotaplane"), "db", "--database-url", url, "upgrade", "--wait", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert "database not reachable after 1 s" in done.stderr
