"""Redis side of the ledger: draining unflushed usage, and charging recorded usage to counters.

``RedisUnflushedUsage`` implements the crash-safe half of the usage flush
(``services/usage_flusher.py`` has the whole protocol). Its keys extend the layout of ``keys.py``
under the tenant's hash tag:

- ``<p>:{<tenant>}:unflushed:<flush_id>``: a pending record, the unflushed hash renamed by
  ``scripts/flush_take.lua``; deleted by ``scripts/flush_complete.lua`` once the ledger has
  the flush id.
- ``<p>:{<tenant>}:unflushed:pending``: the set of the tenant's pending flush ids.

Every name starts with ``<p>:{<tenant>}:unflushed``, so one ``SCAN MATCH <p>:{*}:unflushed*``
(``tenants_with_usage``, the slow safety net) finds both usage never taken and records left
by a crash.

``RedisQuotaCounters`` adds RecordUsage events to the month counter ``consume.lua`` checks
(``keys.counter_key``), without touching the unflushed hash: those events reach the ledger
through their own transaction, never through a flush. It also seeds that counter, when it is
missing, from the ledger plus the usage still in Redis (``scripts/flush_seed.lua``); a missing
counter is an unseeded one, and ``consume.lua`` charges nothing on it. The seed is checked
against ``<p>:{<tenant>}:ledger-gen``, which every flush take and completion and every
RecordUsage that finds the counter missing bumps: a seed that read the ledger before such a
change reads it again (``scripts/flush_seed.lua`` says why that makes the seed exact).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from quotaplane.domain.billing.ports import HourlyUsage, PendingFlush, SeedOutcome, SeedSnapshot
from quotaplane.domain.errors import Unavailable
from quotaplane.domain.quota.engine import COUNTER_GRACE
from quotaplane.domain.windows import Period, Window
from quotaplane.storage.redis import keys

PENDING_SET = "pending"
# A seed reads the generation, then the ledger, then seeds: a few hundred ms at most.
GENERATION_TTL_MS = str(24 * 3600 * 1000)
SCAN_COUNT = 1000
# Same margin consume.lua's counters get past their window's end.


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(f"scripts/{name}").read_text("utf-8")


def pending_record_key(prefix: str, tenant_id: str, flush_id: str) -> str:
    return f"{keys.unflushed_key(prefix, tenant_id)}:{flush_id}"


def pending_set_key(prefix: str, tenant_id: str) -> str:
    return f"{keys.unflushed_key(prefix, tenant_id)}:{PENDING_SET}"


def parse_usage(fields: dict[str, str]) -> tuple[HourlyUsage, ...]:
    """Unflushed hash fields (``metric|hour`` and ``metric|hour|overage``) -> hourly rows."""
    units: dict[tuple[str, int], list[int]] = {}
    for field, value in fields.items():
        metric, hour, is_overage = keys.parse_unflushed_field(field)
        slot = units.setdefault((metric, hour), [0, 0])
        slot[1 if is_overage else 0] += int(value)
    return tuple(
        HourlyUsage(metric, datetime.fromtimestamp(hour, UTC), quantity, overage)
        for (metric, hour), (quantity, overage) in sorted(units.items())
    )


class RedisUnflushedUsage:
    """UnflushedUsage on Redis or Redis Cluster."""

    def __init__(self, client: Redis | RedisCluster, *, key_prefix: str) -> None:
        self._client = client
        self._prefix = key_prefix
        self._take = client.register_script(_script("flush_take.lua"))
        self._complete = client.register_script(_script("flush_complete.lua"))

    async def take(self, tenant_id: str) -> PendingFlush | None:
        flush_id = uuid.uuid4().hex
        p = self._prefix
        script_keys = [
            keys.unflushed_key(p, tenant_id),
            pending_record_key(p, tenant_id, flush_id),
            pending_set_key(p, tenant_id),
            ledger_generation_key(p, tenant_id),
        ]
        reply = await self._call(self._take, script_keys, [flush_id, GENERATION_TTL_MS])
        if not reply:
            return None
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        return PendingFlush(flush_id, tenant_id, parse_usage(fields))

    async def pending(self, tenant_id: str) -> list[PendingFlush]:
        flushes = []
        with _redis_errors():
            flush_ids = sorted(
                await self._client.smembers(pending_set_key(self._prefix, tenant_id))
            )
            for member in flush_ids:
                flush_id = str(member)
                key = pending_record_key(self._prefix, tenant_id, flush_id)
                fields = {str(k): str(v) for k, v in (await self._client.hgetall(key)).items()}
                flush = PendingFlush(flush_id, tenant_id, parse_usage(fields))
                if not fields:  # completed by another replica a moment ago
                    await self.complete(flush)
                    continue
                flushes.append(flush)
        return flushes

    async def complete(self, flush: PendingFlush) -> None:
        p, tenant = self._prefix, flush.tenant_id
        script_keys = [
            pending_record_key(p, tenant, flush.flush_id),
            pending_set_key(p, tenant),
            ledger_generation_key(p, tenant),
        ]
        await self._call(self._complete, script_keys, [flush.flush_id, GENERATION_TTL_MS])

    async def tenants_with_usage(self) -> set[str]:
        match = keys.unflushed_key(self._prefix, "*") + "*"
        start = len(self._prefix) + 2  # after "<p>:{"
        found: set[str] = set()
        with _redis_errors():
            async for key in self._client.scan_iter(match=match, count=SCAN_COUNT):
                name = str(key)
                end = name.find("}", start)
                if end > start:
                    found.add(name[start:end])
        return found

    async def _call(self, script: Any, script_keys: Sequence[str], args: Sequence[str]) -> Any:
        with _redis_errors():
            return await script(keys=list(script_keys), args=list(args))


class RedisQuotaCounters:
    """QuotaCounters and CounterSeeds on Redis: the month counter that CheckQuota checks."""

    def __init__(self, client: Redis | RedisCluster, *, key_prefix: str) -> None:
        self._client = client
        self._prefix = key_prefix
        self._add = client.register_script(_script("flush_add.lua"))
        self._seed = client.register_script(_script("flush_seed.lua"))
        self._snapshot = client.register_script(_script("flush_snapshot.lua"))

    async def add(self, tenant_id: str, metric: str, month_start: datetime, units: int) -> None:
        script_keys = [
            self._counter(tenant_id, metric, month_start),
            ledger_generation_key(self._prefix, tenant_id),
        ]
        with _redis_errors():
            await self._add(keys=script_keys, args=[units, _expiry_ms(month_start)])

    async def snapshot(self, tenant_id: str) -> SeedSnapshot:
        p = self._prefix
        script_keys = [ledger_generation_key(p, tenant_id), pending_set_key(p, tenant_id)]
        with _redis_errors():
            generation, *pending = await self._snapshot(keys=script_keys)
        return SeedSnapshot(str(generation), tuple(sorted(str(f) for f in pending)))

    async def seed(
        self,
        tenant_id: str,
        metric: str,
        month_start: datetime,
        ledger_units: int,
        *,
        snapshot: SeedSnapshot,
        applied: frozenset[str],
    ) -> SeedOutcome:
        p = self._prefix
        script_keys = [
            self._counter(tenant_id, metric, month_start),
            keys.unflushed_key(p, tenant_id),
            pending_set_key(p, tenant_id),
            ledger_generation_key(p, tenant_id),
        ]
        month = Period.of(month_start)
        args: list[str | int] = [
            ledger_units,
            _expiry_ms(month_start),
            snapshot.generation,
            metric,
            _epoch(month.start),
            _epoch(month.end),
            *sorted(applied),
        ]
        with _redis_errors():
            reply = int(await self._seed(keys=script_keys, args=args))
        return SEED_OUTCOMES[reply]

    def _counter(self, tenant_id: str, metric: str, month_start: datetime) -> str:
        start = _epoch(month_start)
        return keys.counter_key(self._prefix, tenant_id, metric, Window.MONTH.value, start)


SEED_OUTCOMES = {1: SeedOutcome.SEEDED, 0: SeedOutcome.ALREADY, -1: SeedOutcome.LEDGER_MOVED}


def ledger_generation_key(prefix: str, tenant_id: str) -> str:
    return f"{keys.tenant_tag(prefix, tenant_id)}:ledger-gen"


def _expiry_ms(month_start: datetime) -> int:
    """The month counter lives until the month's end plus the grace ``consume.lua`` gives it."""
    return int((Period.of(month_start).end + COUNTER_GRACE).timestamp() * 1000)


def _epoch(at: datetime) -> int:
    return int(at.timestamp())


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    """Redis failures -> Unavailable."""
    try:
        yield
    except (RedisError, OSError) as error:
        raise Unavailable(f"Redis is unavailable: {type(error).__name__}: {error}") from None
