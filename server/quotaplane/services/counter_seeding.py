"""Month counters built from the ledger, so a Redis that lost a counter gives no free quota.

``LedgerSeededCounters`` wraps the counter store and marks every ``month`` limit of a call as
*seeded*: the store's atomic script charges nothing on such a counter while it is missing
(the first call of the month, a Redis failover or data loss, a deleted key) and answers
``needs_seed`` instead (so does it for the month counters a spend cap reads: every charged
metric's, ``SpendCall``). The wrapper then builds the counter (``CounterSeeds.seed``) from the
ledger's units of the month plus the month's usage still waiting in Redis, once across
replicas, and calls again. There is no window in which a missing counter admits from zero.

Races with the flush and RecordUsage are closed by a snapshot read before the ledger: the
tenant's ledger generation and its pending flushes. The ledger says which of those flushes it
has applied (they are in its units already), and the seed is refused and read again when the
generation moved in between (a flush took or completed a record, or RecordUsage added usage the
missing counter could not take). Every admitted unit is then counted exactly once.

The seed has ``budget`` (``SEED_BUDGET``, or the Redis timeout when longer) for all of its reads
and retries: if the ledger cannot answer in time, the call is ``Unavailable`` (Envoy's failure
mode decides), since admitting it would mean counting from a guess.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from datetime import UTC, datetime, timedelta

from quotaplane.domain.billing.ports import CounterSeeds, SeedOutcome, UsageLedger
from quotaplane.domain.errors import Unavailable
from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult, CounterLimit, CounterStore
from quotaplane.domain.windows import Period, Window

# A call is retried when its counter was lost again right after the seed: rare, so a few
# attempts suffice.
ATTEMPTS = 3
SEED_BUDGET = timedelta(milliseconds=500)  # at least; a longer Redis timeout lengthens it
Key = tuple[str, str, int]  # tenant, metric, month start (unix seconds)


class LedgerSeededCounters:
    """A CounterStore whose month counters are seeded from the ledger before use."""

    def __init__(
        self,
        inner: CounterStore,
        seeds: CounterSeeds,
        ledger: UsageLedger,
        *,
        budget: timedelta = SEED_BUDGET,
    ) -> None:
        self._inner = inner
        self._seeds = seeds
        self._ledger = ledger
        self._budget = budget.total_seconds()
        self._seeding: dict[Key, asyncio.Task[None]] = {}

    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        call = dataclasses.replace(call, limits=_seeded_limits(call.limits))
        for _ in range(ATTEMPTS):
            result = await self._inner.consume(call)
            if not result.needs_seed:
                return result
            await self._seed_once(_month_key(call, result))
        raise Unavailable(f"the month counter of tenant {call.tenant_id} keeps disappearing")

    async def _seed_once(self, key: Key) -> None:
        # Concurrent calls that find the counter missing share one seed (and ledger query).
        task = self._seeding.get(key)
        if task is None:
            task = asyncio.ensure_future(self._seed(key))
            self._seeding[key] = task
            task.add_done_callback(lambda _: self._seeding.pop(key, None))
        await asyncio.shield(task)

    async def _seed(self, key: Key) -> None:
        tenant_id, metric, start = key
        month_start = datetime.fromtimestamp(start, UTC)
        try:
            async with asyncio.timeout(self._budget):
                # Each attempt that lost a race to a flush is retried, within the budget.
                while not await self._seed_from(tenant_id, metric, month_start):
                    pass
        except TimeoutError:
            raise Unavailable(
                f"the month counter of {tenant_id}/{metric} was not seeded from the ledger "
                f"within {self._budget * 1000:g} ms"
            ) from None

    async def _seed_from(self, tenant_id: str, metric: str, month_start: datetime) -> bool:
        """One attempt; False if the ledger moved meanwhile."""
        snapshot = await self._seeds.snapshot(tenant_id)
        units, applied = await self._ledger.units_and_applied(
            tenant_id, metric, Period.of(month_start), snapshot.pending_flushes
        )
        outcome = await self._seeds.seed(
            tenant_id, metric, month_start, units, snapshot=snapshot, applied=applied
        )
        return outcome is not SeedOutcome.LEDGER_MOVED


@functools.lru_cache(maxsize=4096)
def _seeded_limits(limits: tuple[CounterLimit, ...]) -> tuple[CounterLimit, ...]:
    """The limits with their month counter marked as seeded (cached: limits repeat)."""
    return tuple(
        dataclasses.replace(limit, seeded=True) if limit.window is Window.MONTH else limit
        for limit in limits
    )


def _month_key(call: ConsumeCall, result: ConsumeResult) -> Key:
    if result.seed_metric is not None and call.spend is not None:
        # A spend cap's month counter of another charged metric (``SpendCall``).
        return call.tenant_id, result.seed_metric, call.spend.month_start
    month = next((limit for limit in call.limits if limit.seeded), None)
    if month is None:  # the call's own metric, counted for its spend cap only
        assert call.spend is not None
        return call.tenant_id, call.metric, call.spend.month_start
    return call.tenant_id, call.metric, month.window_start
