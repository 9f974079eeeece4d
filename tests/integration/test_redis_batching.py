"""The hot path's Redis plumbing: pipelined connection and per-tick script batcher, for real.

Against the run's Redis: every caller gets its own reply however the replies are chunked,
and a database index in the URL is selected. Against a server that accepts and never answers
(a real socket, nothing mocked): every call fails within its own deadline, including calls
that queued behind a late batch, and a later batch uses a new connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from quotaplane.storage.redis.batching import ScriptBatcher
from quotaplane.storage.redis.client import command_pipe

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
ECHO_BIG = "return string.rep(ARGV[1], 20000)"


@pytest.fixture
async def keys(redis_url: str, redis_key_prefix: str) -> AsyncIterator[str]:
    prefix = f"{redis_key_prefix}:batching"
    yield prefix
    client = redis_asyncio.Redis.from_url(redis_url)
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.unlink(key)
    await client.aclose()


async def test_each_of_many_concurrent_calls_gets_its_own_reply(redis_url: str, keys: str) -> None:
    pipe = command_pipe(redis_url, timeout=2.0)
    batcher = ScriptBatcher(pipe, INCR, timeout=2.0)
    try:
        replies = await asyncio.gather(
            *(batcher.call([f"{keys}:{i % 7}"], [i]) for i in range(1, 1001))
        )
    finally:
        await pipe.aclose()
    # Counter k ends at the sum of the i with i % 7 == k; each reply is one of its prefixes.
    totals = {k: sum(i for i in range(1, 1001) if i % 7 == k) for k in range(7)}
    for i, reply in enumerate(replies, start=1):
        assert 0 < reply <= totals[i % 7]
    assert max(r for i, r in enumerate(replies, start=1) if i % 7 == 3) == totals[3]


async def test_replies_larger_than_one_read_are_reassembled(redis_url: str) -> None:
    pipe = command_pipe(redis_url, timeout=2.0)
    batcher = ScriptBatcher(pipe, ECHO_BIG, timeout=2.0)
    try:
        replies = await asyncio.gather(*(batcher.call([], [f"{i:02d}"]) for i in range(20)))
    finally:
        await pipe.aclose()
    assert replies == [f"{i:02d}" * 20000 for i in range(20)]


async def test_the_database_in_the_url_is_selected(redis_url: str, keys: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/3"
    pipe = command_pipe(url, timeout=2.0)
    batcher = ScriptBatcher(pipe, INCR, timeout=2.0)
    try:
        assert await batcher.call([f"{keys}:db3"], [5]) == 5
    finally:
        await pipe.aclose()
    client = redis_asyncio.Redis.from_url(url)
    try:
        assert await client.get(f"{keys}:db3") == b"5"
        await client.unlink(f"{keys}:db3")
    finally:
        await client.aclose()


async def _silent_server() -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    """Accepts connections, reads everything, answers nothing."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    return await asyncio.start_server(swallow, "127.0.0.1", 0), connections


async def test_a_silent_server_fails_every_call_within_its_deadline() -> None:
    server, connections = await _silent_server()
    port = server.sockets[0].getsockname()[1]
    timeout = 0.2
    pipe = command_pipe(f"redis://127.0.0.1:{port}/0", timeout=timeout)
    batcher = ScriptBatcher(pipe, INCR, timeout=timeout)

    async def timed_call(delay: float) -> float:
        await asyncio.sleep(delay)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await batcher.call(["k"], [1])
        return time.monotonic() - started

    try:
        # The first call's batch goes on the wire; the later ones queue behind it.
        elapsed = await asyncio.gather(*(timed_call(d) for d in (0, 0.05, 0.1, 0.15)))
        assert all(e < timeout + 0.05 for e in elapsed), elapsed
        assert len(connections) >= 2  # the late batch's connection was dropped, not reused
    finally:
        await pipe.aclose()
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


async def test_an_unreachable_server_fails_fast_and_drain_returns() -> None:
    server, _ = await _silent_server()
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens on the port any more
    pipe = command_pipe(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    batcher = ScriptBatcher(pipe, INCR, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await batcher.call(["k"], [1])
    assert time.monotonic() - started < 0.5
    await asyncio.wait_for(batcher.drain(), 1.0)
    await pipe.aclose()
