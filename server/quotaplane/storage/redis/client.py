"""Redis connections from operator URLs: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``.

Two shapes:

- ``redis_client``: a redis-py client (admin tools, the ledger flush, tests).
- ``command_pipe``: what the hot path uses to send one batch of commands per round trip.
  For a single Redis it is ``PipelineConnection``, one asyncio stream parsed by hiredis: the
  batch is written at once and the replies read back, with none of redis-py's per-command
  pool, retry and observability machinery (which cost more CPU per call than the gRPC call
  itself here). For ``redis+cluster://`` it is redis-py's cluster pipeline, which routes each
  command to the master owning its slot.

Nothing is retried: a retry stacked on a timeout would turn a 100 ms bound into seconds. A
failed or timed-out batch closes its connection, and the next batch connects again, so the
hot path recovers by itself when Redis comes back. Error replies are returned in place
(``ResponseError``, ``NoScriptError``), never raised, so one bad call cannot fail its batch.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

CLUSTER_SCHEME = "redis+cluster://"
MAX_CONNECTIONS = 64
READ_CHUNK = 1 << 16

Arg = str | int
Command = Sequence[Arg]


class CommandPipe(Protocol):
    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """One reply per command, in order; error replies as exception instances."""
        ...

    async def load_script(self, source: str) -> None:
        """SCRIPT LOAD on every server that may run the script."""
        ...

    async def aclose(self) -> None: ...


def redis_client(url: str, *, timeout: float) -> Redis | RedisCluster:
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
    return PipelineConnection(url)


class PipelineConnection:
    """One Redis connection that sends a batch and reads its replies; one batch at a time.

    The caller bounds each ``execute`` with a timeout; a cancelled or failed batch closes the
    connection (its replies would otherwise be read by the next batch).
    """

    def __init__(self, url: str) -> None:
        self._params = parse_url(url)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader(encoding="utf-8")

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        try:
            if self._writer is None:
                await self._connect()
            return await self._round_trip(commands)
        except BaseException:
            await self.aclose()
            raise

    async def load_script(self, source: str) -> None:
        (reply,) = await self.execute([("SCRIPT", "LOAD", source)])
        if isinstance(reply, Exception):
            raise reply

    async def aclose(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()

    async def _connect(self) -> None:
        params = self._params
        if "path" in params:
            reader, writer = await asyncio.open_unix_connection(params["path"])
        else:
            tls = (
                ssl.create_default_context()
                if params.get("connection_class") is SSLConnection
                else None
            )
            reader, writer = await asyncio.open_connection(params["host"], params["port"], ssl=tls)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader, self._writer = reader, writer
        self._parser = hiredis.Reader(encoding="utf-8")
        await self._handshake()

    async def _handshake(self) -> None:
        params, setup = self._params, list[Command]()
        if params.get("password"):
            setup.append(("AUTH", *filter(None, (params.get("username"), params["password"]))))
        if params.get("db"):
            setup.append(("SELECT", params["db"]))
        for reply in await self._round_trip(setup) if setup else []:
            if isinstance(reply, Exception):
                raise RedisConnectionError(f"Redis refused the connection set-up: {reply}")

    async def _round_trip(self, commands: Sequence[Command]) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(pack(commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await self._reader.read(READ_CHUNK)
            if not data:
                raise RedisConnectionError("Redis closed the connection")
            self._parser.feed(data)
            while (reply := self._parser.gets()) is not False:
                replies.append(_error(reply) if isinstance(reply, hiredis.ReplyError) else reply)
        return replies


class ClusterPipe:
    """Batches through redis-py's cluster pipeline (commands grouped per master)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    async def load_script(self, source: str) -> None:
        await self._client.script_load(source)

    async def aclose(self) -> None:
        await self._client.aclose()


def pack(commands: Sequence[Command]) -> bytes:
    """RESP arrays of bulk strings for ``commands``."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg.encode() if isinstance(arg, str) else b"%d" % arg
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)
