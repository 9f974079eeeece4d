"""One Redis round trip per event-loop tick: EVALSHA calls batched into a pipeline.

grpc.aio runs each call as a task; all handlers that become ready in the same loop iteration
submit their script call here before the flush (scheduled with ``call_soon``) runs, and the
flush sends them all in one non-transactional pipeline. Each caller awaits its own future, so
a failure of one call (a script error) does not fail the others. While ``max_in_flight``
batches are on the wire, new calls wait and leave together with the next batch: under load the
batches grow instead of the number of round trips (perf-notes: ~0.79 of a trivial handler's
throughput, against 0.59 for one EVALSHA per call).

After a Redis restart the script cache is empty: the calls that got NOSCRIPT did not run, so
they are re-sent once after SCRIPT LOAD. Timeouts are the caller's business (``counters``);
the batch itself is bounded by ``timeout`` so that a hung server frees the in-flight slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from quotaplane.storage.redis.client import Arg, CommandPipe


@dataclass
class _Call:
    keys: Sequence[str]
    args: Sequence[Arg]
    future: asyncio.Future[Any] = field(repr=False)


class ScriptBatcher:
    """Runs one Lua script by SHA for many callers, one pipeline per loop tick."""

    def __init__(
        self,
        pipe: CommandPipe,
        source: str,
        *,
        timeout: float,
        max_in_flight: int = 1,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self._pipe = pipe
        self._observe = observe
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._queue: list[_Call] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The script's reply for these keys and args (raises what Redis raised)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(keys, args, future))
        self._schedule(loop)
        return await future

    async def load(self) -> None:
        """Load the script now (optional: a NOSCRIPT reply loads it on demand)."""
        await self._pipe.load_script(self._source)

    async def drain(self) -> None:
        """Wait for the batches on the wire (used at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled and self._in_flight < self._max_in_flight:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch = [call for call in self._queue if not call.future.done()]
        self._queue = []
        if not batch:
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._queue:
            self._schedule(asyncio.get_running_loop())

    async def _send(self, batch: list[_Call]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._execute(batch)
                missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if missing:
                    await self._pipe.load_script(self._source)
                    retried = await self._execute([batch[i] for i in missing])
                    for i, reply in zip(missing, retried, strict=True):
                        replies[i] = reply
        except Exception as error:
            for call in batch:
                _settle(call.future, error)
            return
        for call, reply in zip(batch, replies, strict=True):
            _settle(call.future, reply)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        started = time.perf_counter()
        replies = await self._pipe.execute(
            [("EVALSHA", self.sha, len(call.keys), *call.keys, *call.args) for call in batch]
        )
        if self._observe is not None:  # one sample per round trip, not per call
            self._observe(time.perf_counter() - started)
        return replies


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # the caller gave up (timeout or cancellation)
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)
