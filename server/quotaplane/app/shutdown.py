"""Shutdown steps that cannot hold the process hostage.

The Runtime stops its parts in reverse start order (an AsyncExitStack). Each asynchronous step
runs within a limit: a step that has not finished by then is logged at ERROR with the place it
is stuck at, cancelled and left behind, and the steps after it still run (the final usage
flush, the embedded valkey's clean stop, the metrics endpoint), so ``serve`` exits instead of
hanging with its data directory locked. The limit does not wait for the cancelled step to
unwind: a step stuck in something that ignores cancellation must not hang the stop either.

Why: the test suite twice saw a stop that never returned after "shutting down" was logged
(2026-11-24, not reproduced in 100+ tries since); the ERROR line names the step and its stack.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

log = logging.getLogger(__name__)

STEP_LIMIT_S = 15.0  # above every step's own bound (final flush 5 s, thread joins 5 s)


def push_bounded(
    stack: AsyncExitStack,
    name: str,
    stop: Callable[..., Awaitable[object]],
    *args: Any,
    limit: float = STEP_LIMIT_S,
) -> None:
    """Register ``stop(*args)`` as a shutdown step of at most ``limit`` seconds."""
    stack.push_async_callback(run_bounded, name, limit, stop, *args)


async def run_bounded(
    name: str, limit: float, stop: Callable[..., Awaitable[object]], *args: Any
) -> None:
    """Run one step; its own error propagates, a hang is logged and abandoned."""
    step = asyncio.ensure_future(stop(*args))
    done, _ = await asyncio.wait({step}, timeout=limit)
    if done:
        step.result()
        return
    where = io.StringIO()
    step.print_stack(file=where)
    step.cancel()
    log.error(
        "shutdown step %r did not finish within %g s; left behind so the rest can stop",
        name,
        limit,
        extra={"step": name, "limit_s": limit, "stuck_at": where.getvalue()},
    )
