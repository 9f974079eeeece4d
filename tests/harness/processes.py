"""ManagedProcess: a child process a test starts, waits for, and is sure to stop.

Used to run `quotaplane serve`, envoy, the sample OpenClaw upstream and throwaway database
servers. Output goes to a log file (the test's tmp dir), readiness waits are bounded and fail
with the log's last lines, and every started process is tracked in a registry that an atexit
hook sweeps, so a crashed or interrupted test run leaves nothing behind.

Each process runs in its own session (process group): ``terminate()`` and ``kill()`` signal
only the main process (fault tests kill exactly what they mean to), while ``close()`` (the
context-manager exit) also sweeps anything left in the group.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.harness.net import tcp_accepts, unix_accepts

LOG_TAIL_LINES = 40
_POLL_INTERVAL = 0.05

_LIVE: set[ManagedProcess] = set()


class ProcessStartError(RuntimeError):
    """A managed process exited or did not become ready in time."""


class ManagedProcess:
    """One command run for a test, logging to ``log_path``."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        self.name = name or Path(self.argv[0]).name
        self._env = {**(os.environ if inherit_env else {}), **(env or {})}
        self._cwd = cwd
        self._stop_signal = stop_signal
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> ManagedProcess:
        """Start the command; a no-op while it runs. After a stop it starts again (same log)."""
        if self.is_running():
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            self.argv,
            env=self._env,
            cwd=self._cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE.add(self)
        return self

    def wait_for_port(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        """Wait until host:port accepts TCP connections."""
        self.wait_until(lambda: tcp_accepts(port, host), timeout, f"{host}:{port} to accept")

    def wait_for_unix_socket(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        """Wait until the unix socket at ``path`` accepts connections."""
        self.wait_until(lambda: unix_accepts(path), timeout, f"unix socket {path} to accept")

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "readiness"
    ) -> None:
        """Poll ``predicate`` until true; raise with the log tail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if not self.is_running():
                raise ProcessStartError(
                    f"{self.name} exited with code {self.returncode} while waiting for {what}"
                    f"\n{self._tail_report()}"
                )
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{self.name} (pid {self.pid}): no {what} within {timeout:g}s"
                    f"\n{self._tail_report()}"
                )
            time.sleep(_POLL_INTERVAL)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself; return its exit code.

        Raises subprocess.TimeoutExpired if it is still running after ``timeout`` seconds.
        """
        if self._process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._process.wait(timeout)

    def terminate(self, timeout: float | None = None) -> int | None:
        """Send the stop signal, wait, then SIGKILL; return the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(self._stop_signal)
            try:
                process.wait(self._stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def kill(self) -> int | None:
        """SIGKILL the main process (not its children) and reap it; return the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait()

    def close(self) -> None:
        """Stop the process, sweep its process group, close the log. Safe to call twice."""
        try:
            self.terminate()
            if self._process is not None:
                _kill_group(self._process.pid)
        finally:
            self._close_log()
            _LIVE.discard(self)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with self.log_path.open("r", encoding="utf-8", errors="replace") as log:
                return "".join(deque(log, maxlen=lines))
        except FileNotFoundError:
            return ""

    def __enter__(self) -> ManagedProcess:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"

    def _tail_report(self) -> str:
        return f"last {LOG_TAIL_LINES} lines of {self.log_path}:\n{self.log_tail()}"

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _kill_group(pgid: int) -> None:
    # The group id is the leader's pid (start_new_session); members may outlive the leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@atexit.register
def _close_all() -> None:
    for process in list(_LIVE):
        process.close()
