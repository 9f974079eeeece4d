"""The data directory of the embedded default: one running server per directory, and the
credentials generated into it.

``serve`` holds an exclusive ``flock`` on ``<data dir>/serve.lock`` for its whole life, so a
second ``serve`` on the same directory fails at once with a clear error instead of starting a
second valkey or writing the same SQLite file. The OS drops the lock if the process dies.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from pathlib import Path
from types import TracebackType

from quotaplane.config import ConfigError

log = logging.getLogger(__name__)

DATA_DIR_SETTING = "QUOTAPLANE_DATA_DIR"
LEDGER_FILE = "ledger.db"  # the embedded SQLite ledger inside the data directory


def ensure_data_dir(data_dir: Path) -> Path:
    """``data_dir``, created if needed; a ConfigError naming the setting if it cannot be."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"{DATA_DIR_SETTING} (--data-dir) {str(data_dir)!r} cannot be used: "
            f"{error.strerror or error}; point it at a writable directory"
        ) from None
    return data_dir


class DataDirInUse(RuntimeError):
    """Another process holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._path = data_dir / "serve.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_data_dir(self.data_dir)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"data directory {self.data_dir} is in use by another quotaplane serve "
                f"(pid {holder}); stop it or set {DATA_DIR_SETTING} to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def generated_token(data_dir: Path, name: str, prefix: str, setting: str) -> str:
    """A random token for local runs, kept in ``<data dir>/<name>`` (mode 0600) so a restart and
    the CLI find the same one. Logged by path, never by value."""
    path = ensure_data_dir(data_dir) / name
    if path.exists():
        token = path.read_text().strip()
    else:
        token = prefix + secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
    log.warning(
        "%s is not set; using the generated token in %s",
        setting,
        path,
        extra={"token_file": str(path)},
    )
    return token
