"""Bounded shutdown steps: a stuck step is named, abandoned, and the steps after it still run."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack

import pytest

from quotaplane.app.shutdown import push_bounded


async def _record(ran: list[str], name: str) -> None:
    ran.append(name)


async def _waits_forever(never: asyncio.Event) -> None:
    await never.wait()


async def _ignores_cancellation(release: asyncio.Event) -> None:
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue  # what a misbehaving library might do


@pytest.mark.parametrize("stuck", [_waits_forever, _ignores_cancellation])
async def test_a_stuck_step_is_logged_and_the_next_steps_still_run(
    stuck: object, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    release = asyncio.Event()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="quotaplane.app.shutdown"):
        async with AsyncExitStack() as stack:
            push_bounded(stack, "last to stop", _record, ran, "last")  # registered first, runs last
            push_bounded(stack, "stuck part", stuck, release, limit=0.2)  # type: ignore[arg-type]
            push_bounded(stack, "first to stop", _record, ran, "first")
    assert time.monotonic() - started < 5
    assert ran == ["first", "last"]
    [logged] = [r for r in caplog.records if r.name == "quotaplane.app.shutdown"]
    assert "'stuck part' did not finish within 0.2 s" in logged.getMessage()
    assert stuck.__name__ in logged.stuck_at  # type: ignore[attr-defined]
    release.set()  # let the abandoned step end: the test loop outlives this test
    await asyncio.sleep(0)


async def test_a_step_that_fails_still_lets_the_others_stop_then_raises() -> None:
    ran: list[str] = []

    async def fails() -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        async with AsyncExitStack() as stack:
            push_bounded(stack, "last", _record, ran, "last")
            push_bounded(stack, "failing", fails)
    assert ran == ["last"]
