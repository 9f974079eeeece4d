"""A background service as the runtime starts and stops it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Loop:
    """A background service: ``run`` until cancelled, then ``final`` once (if any)."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    final: Callable[[], Coroutine[Any, Any, Any]] | None = None
