"""Ports: the Protocols that storage adapters implement, and the values that cross them.

The domain calls these; ``storage/`` implements them (Redis for counters, SQL for tenants);
``app.py`` plugs one into the other. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from quotaplane.domain.model import Tenant
from quotaplane.domain.windows import Window

# --- counters (hot path) ---------------------------------------------------------------------


@dataclass(frozen=True)
class CounterLimit:
    """One limit as the counter store sees it: which window, how much, when the key may go."""

    window: Window
    window_start: int  # unix seconds of the window's start: names the counter
    limit: int
    bill: bool  # overage policy "bill": admit past the limit, mark the excess as overage
    expires_at_ms: int  # unix milliseconds after which the counter is no longer needed
    # A billing-period counter, (re)built from the ledger: the store charges nothing on it
    # while it is missing and answers ``needs_seed`` instead.
    seeded: bool = False


@dataclass(frozen=True)
class ConsumeCall:
    """Check ``cost`` units against every limit and consume them on all or none."""

    tenant_id: str
    metric: str
    cost: int
    limits: tuple[CounterLimit, ...]
    hour_start: int  # unix seconds of the UTC hour the admitted units are billed in
    dedup_expires_at_ms: int  # how long a request id's first decision is kept
    request_id: str | None = None
    dry_run: bool = False
    # Kept with the first decision of ``request_id`` and handed back on a repeat
    # (``domain/replay.py``); the store does not read it.
    request_record: str = ""


@dataclass(frozen=True)
class ConsumeResult:
    """``used[i]``: limit i's counter after the decision (unchanged for denials and dry runs)."""

    allowed: bool
    used: tuple[int, ...]
    replayed: bool = False
    needs_seed: bool = False  # nothing was decided: a ``seeded`` counter is missing
    first_request: str | None = None  # on a replay: the record kept with the first decision


class CounterStore(Protocol):
    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        """Atomically decide and consume; raises Unavailable when the store cannot answer."""
        ...


# --- tenants -----------------------------------------------------------------------------------


class TenantSource(Protocol):
    """What the in-process tenant directory reads."""

    async def get(self, tenant_id: str) -> Tenant | None: ...

    async def list_changed_since(self, since: datetime | None) -> list[Tenant]:
        """Tenants whose ``updated_at`` is at or after ``since`` (all of them for None)."""
        ...


class TenantStore(TenantSource, Protocol):
    """The tenants table: what the admin use cases change."""

    async def create(self, *, name: str, plan: str, external_id: str | None = None) -> Tenant: ...

    async def list_page(self, *, after: str | None = None, size: int = 100) -> list[Tenant]: ...

    async def update_plan(self, tenant_id: str, plan: str) -> Tenant: ...

    async def suspend(self, tenant_id: str, reason: str = "") -> Tenant: ...

    async def resume(self, tenant_id: str) -> Tenant: ...
