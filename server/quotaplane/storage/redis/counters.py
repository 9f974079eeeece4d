"""The Redis counter store: CheckQuota's check-and-consume as one Lua script per call.

``scripts/consume.lua`` decides and consumes on every limit of a call atomically (all or
nothing) and adds admitted units to the tenant's unflushed hash in the same step; this module
only builds its keys and arguments (names from ``keys.py``), sends it through the per-tick
batcher and parses the reply. Python never reads a counter and then writes it.

Failure: any Redis error or a reply later than ``timeout`` becomes ``Unavailable``. A call
that timed out may still have been applied by Redis; a caller that retries with the same
``request_id`` is answered from the first decision instead of being charged twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources

from redis.exceptions import RedisError

from quotaplane.domain.errors import Unavailable
from quotaplane.domain.quota.ports import ConsumeCall, ConsumeResult, SpendCall
from quotaplane.domain.windows import Window
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.batching import ScriptBatcher
from quotaplane.storage.redis.client import Arg, CommandPipe
from quotaplane.storage.redis.replay_records import encode_record, parse_record

NEEDS_SEED = 2  # consume.lua's first reply value when a seeded counter is missing
ALLOWED, SPEND_CAP = 1, 2  # consume.lua's verdicts besides 0 (refused by a limit)


def consume_script_source() -> str:
    return resources.files(__package__).joinpath("scripts/consume.lua").read_text("utf-8")


class RedisCounterStore:
    """CounterStore on Redis or Redis Cluster."""

    def __init__(
        self,
        pipe: CommandPipe,
        *,
        key_prefix: str,
        timeout: float,
        max_in_flight: int = 1,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self._prefix = key_prefix
        self._timeout = timeout
        self._batcher = ScriptBatcher(
            pipe,
            consume_script_source(),
            timeout=timeout,
            max_in_flight=max_in_flight,
            observe=observe,
        )

    async def consume(self, call: ConsumeCall) -> ConsumeResult:
        try:
            # The batcher bounds the call by ``timeout`` (one timer per batch, not per call).
            reply = await self._batcher.call(self.script_keys(call), self.script_args(call))
        except TimeoutError:
            raise Unavailable(f"Redis did not answer within {self._timeout * 1000:g} ms") from None
        except (RedisError, OSError) as error:
            raise Unavailable(f"Redis is unavailable: {type(error).__name__}: {error}") from None
        return parse_reply(reply, len(call.limits), call)

    async def load_script(self) -> None:
        """Load the script into Redis now rather than on the first call."""
        await self._batcher.load()

    async def drain(self) -> None:
        await self._batcher.drain()

    def script_keys(self, call: ConsumeCall) -> list[str]:
        p, tenant = self._prefix, call.tenant_id
        script_keys = [keys.unflushed_key(p, tenant)]
        script_keys += [
            keys.counter_key(p, tenant, call.metric, limit.window.value, limit.window_start)
            for limit in call.limits
        ]
        if call.spend is not None:
            start = call.spend.month_start
            script_keys += [
                keys.counter_key(p, tenant, pricing.metric, Window.MONTH.value, start)
                for pricing in call.spend.rule.metrics
            ]
        script_keys.append(keys.shadow_key(p, tenant))
        if call.request_id is not None:
            script_keys.append(keys.dedup_key(p, tenant, call.request_id))
        return script_keys

    @staticmethod
    def script_args(call: ConsumeCall) -> list[Arg]:
        args: list[Arg] = [
            call.cost,
            "1" if call.dry_run else "0",
            len(call.limits),
            call.dedup_expires_at_ms,
            keys.unflushed_field(call.metric, call.hour_start),
            keys.overage_field(call.metric, call.hour_start),
            encode_record(call.first_request) if call.first_request is not None else "",
            keys.shadow_field("", call.hour_start),
            (call.hour_start + keys.SHADOW_RETENTION_SECONDS) * 1000,
        ]
        for limit in call.limits:
            policy = "bill" if limit.bill else "block"
            mode = "shadow" if limit.shadow else "enforce"
            seeded = "1" if limit.seeded else "0"
            name = f"{call.metric}/{limit.window.value}"
            args += [limit.limit, policy, limit.expires_at_ms, seeded, mode, name]
        return args + spend_args(call.spend)


def spend_args(spend: SpendCall | None) -> list[Arg]:
    """The script's spend section: ``0`` without a cap, else the compiled rule."""
    if spend is None:
        return [0]
    rule = spend.rule
    self_limit = 0 if spend.self_limit is None else spend.self_limit + 1
    args: list[Arg] = [len(rule.metrics), rule.cap_minor, rule.base_fee_minor, rule.divisor]
    args += [spend.metric_index + 1, self_limit, spend.expires_at_ms]
    for pricing in rule.metrics:
        args += [pricing.included, len(pricing.segments)]
        for s in pricing.segments:
            args += [s.lower, s.upper, s.start, s.base, s.price, s.step, s.safe_steps]
    return args


def parse_reply(
    reply: Sequence[object], limits: int, call: ConsumeCall | None = None
) -> ConsumeResult:
    """``[replayed, "allowed,used_1,...|overage|shadow|spend"]`` (``"<record>\n<allowed,...>"``
    for a replay) -> ConsumeResult. A decision kept before a part was in the reply lacks it:
    no overage, no shadow denials, no spend total."""
    replayed, encoded = reply
    if replayed == NEEDS_SEED:
        return ConsumeResult(
            allowed=False,
            used=(0,) * limits,
            needs_seed=True,
            seed_metric=_seed_metric(encoded, call),
        )
    record, newline, decision = str(encoded).rpartition("\n")
    counters, _, rest = decision.partition("|")
    overage, _, rest = rest.partition("|")
    shadow, _, spend = rest.partition("|")
    verdict, *used = (int(part) for part in counters.split(","))
    if not newline and len(used) != limits:
        # Only a replay of a decision kept without its record (before records were kept)
        # under another plan gets here: its counters are matched to the limits in order.
        used = (used + [0] * limits)[:limits]
    return ConsumeResult(
        allowed=verdict == ALLOWED,
        used=tuple(used),
        replayed=bool(replayed),
        first_request=parse_record(record) if newline else None,
        overage=int(overage or 0),
        shadow_denied=tuple(int(i) - 1 for i in shadow.split(":") if i),
        spend_denied=verdict == SPEND_CAP,
        spend_total=int(spend) if spend else None,
    )


def _seed_metric(encoded: object, call: ConsumeCall | None) -> str | None:
    """The metric of the missing spend counter the script named (``"<j>"``, 1-based)."""
    text = encoded.decode() if isinstance(encoded, bytes) else str(encoded)
    if not text or call is None or call.spend is None:
        return None
    return call.spend.rule.metrics[int(text) - 1].metric
