"""Redis connections from operator URLs: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``.

Two shapes:

- ``redis_client``: a redis-py client (admin tools, the ledger flush, tests).
- ``command_pipe``: what the hot path sends its batches through. For a single Redis it is
  ``resp.RespConnection``, one pipelined connection parsed by hiredis, with none of redis-py's
  per-command pool, retry and observability machinery (which cost more CPU per call than the
  gRPC call itself here). For ``redis+cluster://`` it is redis-py's cluster pipeline, which
  routes each command to the master owning its slot.

Nothing is retried: a retry stacked on a timeout would turn a 100 ms bound into seconds. The
batcher bounds every batch and resets the pipe when one is late; the next batch connects
again, so the hot path recovers by itself when Redis comes back. Error replies are returned in
place (``ResponseError``, ``NoScriptError``), never raised, so one bad call cannot fail its
batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from quotaplane.storage.redis.resp import Arg, Command, OnReplies, RespConnection

__all__ = ["Arg", "Command", "CommandPipe", "OnReplies", "command_pipe", "redis_client"]

CLUSTER_SCHEME = "redis+cluster://"
MAX_CONNECTIONS = 64


class CommandPipe(Protocol):
    def send(self, commands: Sequence[Command], done: OnReplies) -> None:
        """Send a batch; ``done`` gets one reply per command (error replies as exception
        instances, in place) or the exception that failed the whole batch."""
        ...

    def reset(self, error: BaseException) -> None:
        """Abandon what is on the wire (it was too late): its batches get ``error``."""
        ...

    async def load_script(self, source: str) -> None:
        """SCRIPT LOAD on every server that may run the script."""
        ...

    async def aclose(self) -> None: ...


RedisClient = Redis | RedisCluster  # what ``redis_client`` returns for an operator URL


def redis_client(url: str, *, timeout: float) -> RedisClient:
    """A redis-py client for ``url`` whose connects and reads give up after ``timeout`` s."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
        "max_connections": MAX_CONNECTIONS,
    }
    if url.startswith(CLUSTER_SCHEME):
        return RedisCluster.from_url("redis://" + url.removeprefix(CLUSTER_SCHEME), **options)
    return Redis.from_url(url, **options)


def command_pipe(url: str, *, timeout: float) -> CommandPipe:
    """The hot path's batch sender for ``url``."""
    if url.startswith(CLUSTER_SCHEME):
        client = redis_client(url, timeout=timeout)
        assert isinstance(client, RedisCluster)
        return ClusterPipe(client)
    return RespConnection(parse_url(url))


class ClusterPipe:
    """Batches through redis-py's cluster pipeline (commands grouped per master)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._sending: set[asyncio.Task[None]] = set()

    def send(self, commands: Sequence[Command], done: OnReplies) -> None:
        task = asyncio.get_running_loop().create_task(self._execute(commands, done))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def reset(self, error: BaseException) -> None:
        for task in list(self._sending):
            task.cancel()

    async def load_script(self, source: str) -> None:
        await self._client.script_load(source)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _execute(self, commands: Sequence[Command], done: OnReplies) -> None:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            replies = list(await pipe.execute(raise_on_error=False))
        except Exception as error:
            done(error)
            return
        done(replies)
