"""The CheckQuota use case: tenant and plan from memory, one atomic consume in the counter store.

``QuotaEngine.check`` resolves the tenant (in-process directory), refuses suspended tenants
without touching the counters, takes the metric's limits from the in-memory plan catalog,
computes each limit's fixed UTC window, and asks the counter store to check and consume the
cost on every limit at once: either every ``block`` limit has room and all are charged, or
nothing is. ``bill`` limits admit past their limit; the excess is reported as overage.
``shadow`` limits are counted in the same step but never refuse; the decision names those that
would have. A plan's spend cap is checked in that step too (``SpendCall``, compiled once per
plan and billed share of the month by ``domain/billing/spend_cap.py``): a charged metric's
request that would make the month's invoice total exceed it is refused as SPEND_CAP.

Semantics the callers rely on:

- ``remaining`` is what is left after this decision (for a dry run or a denial: now).
- ``retry_after`` on OVER_LIMIT is the time until the *last* of the blocking windows that
  lack room resets: only then can the same request succeed.
- A request id's first decision is kept for ``request_id_ttl`` (24 h by default, as Stripe
  keeps an idempotency key), whatever the call's windows: a client's retry comes after a
  timeout, seconds later, when a per-second window has long ended, and must not be charged
  again. A repeat within that time is answered from it exactly (the limits and windows that
  answered then, even after a plan change) and charged nothing; a repeat with another metric
  or cost is refused (``replay.py``). Dry runs neither store nor consume anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from quotaplane.domain.billing.spend_cap import SpendRule, spend_rule
from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from quotaplane.domain.plans.model import Limit, Overage, Plan, PlanCatalog
from quotaplane.domain.plans.overrides import effective_plan
from quotaplane.domain.quota.decisions import Decision, DecisionCode, LimitState, QuotaRequest
from quotaplane.domain.quota.ports import (
    ConsumeCall,
    ConsumeResult,
    CounterLimit,
    CounterStore,
    SpendCall,
    TenantLookup,
)
from quotaplane.domain.quota.replay import FirstRequest, refuse_if_different
from quotaplane.domain.tenants.model import Tenant
from quotaplane.domain.windows import Period, Window, window_reset, window_start

REQUEST_ID_TTL = timedelta(hours=24)  # how long a request id replays, unless configured
_RULES_KEPT = 1024  # compiled spend caps kept: one per plan, and per tenant new this month
_MICROSECOND = timedelta(microseconds=1)
# Counters outlive their window a little, so a late reply or a slow clock never reads a
# counter that has just expired as empty.
COUNTER_GRACE = timedelta(seconds=10)


def utc_now() -> datetime:
    return datetime.now(UTC)


class QuotaEngine:
    """Decides CheckQuota requests. ``plans`` returns the catalog in force (plans reload)."""

    def __init__(
        self,
        *,
        tenants: TenantLookup,
        plans: Callable[[], PlanCatalog],
        counters: CounterStore,
        clock: Callable[[], datetime] = utc_now,
        observers: Sequence[Callable[[QuotaRequest, Decision], None]] = (),
        request_id_ttl: timedelta = REQUEST_ID_TTL,
    ) -> None:
        self._tenants = tenants
        self._plans = plans
        self._counters = counters
        self._clock = clock
        self._observers = tuple(observers)
        self._request_id_ttl = int(request_id_ttl.total_seconds())
        self._rules: dict[tuple[int, int, int], tuple[Plan, SpendRule | None]] = {}

    async def tenant(self, tenant_id: str) -> Tenant:
        """The tenant from the in-process directory; NotFound if it does not exist."""
        return await self._tenants.get(tenant_id)

    async def check(self, request: QuotaRequest) -> Decision:
        tenant = await self._tenants.get(request.tenant_id)
        # Suspension first: a suspended tenant is answered SUSPENDED whatever it asks for.
        if not tenant.active:
            return Decision(allowed=False, code=DecisionCode.SUSPENDED, cost=request.cost)
        plan = self._plan(tenant)
        limits = _limits(plan, request.metric)
        now = self._clock()
        windows = _windows(limits, now, self._request_id_ttl)
        rule = self._spend_rule(plan, tenant, now)
        call = consume_call(request, windows, limits, spend_call(rule, request.metric, limits, now))
        result = await self._counters.consume(call)
        resets: Sequence[datetime] = windows.resets
        if result.replayed and (first := result.first_request) is not None:
            # A repeat is the first answer: its limits and windows, whatever the plan is now.
            refuse_if_different(request, first)
            limits, resets = first.limits, first.resets
        decision = decision_of(request, limits, result, resets, now, rule)
        for observe in self._observers:  # cheap, synchronous: e.g. threshold notifications
            observe(request, decision)
        return decision

    def _spend_rule(self, plan: Plan, tenant: Tenant, now: datetime) -> SpendRule | None:
        """The plan's compiled spend cap for the share of this month the tenant is billed
        (from its creation, as the invoice), built once per (plan value, share)."""
        if plan.spend_cap is None:
            return None
        period = Period.of(now)
        start = min(max(period.start, tenant.created_at), period.end)
        covered, whole = (period.end - start) // _MICROSECOND, period.duration // _MICROSECOND
        key = (id(plan), covered, whole)
        cached = self._rules.get(key)
        if cached is None or cached[0] is not plan:
            if len(self._rules) >= _RULES_KEPT:
                self._rules.clear()
            cached = self._rules[key] = (plan, spend_rule(plan, covered, whole))
        return cached[1]

    def plan_for(self, tenant: Tenant) -> Plan:
        """The tenant's effective plan, as its decisions use it (FailedPrecondition when the
        plans lost its plan or its overrides no longer fit)."""
        return self._plan(tenant)

    def _plan(self, tenant: Tenant) -> Plan:
        try:
            # The tenant's effective plan: its plan with its overrides merged in (memoized).
            return effective_plan(self._plans(), tenant.plan, tenant.overrides)
        except NotFound:
            raise FailedPrecondition(
                f"tenant {tenant.id} is on plan {tenant.plan!r}, which the plans file no longer has"
            ) from None


def _limits(plan: Plan, metric: str) -> tuple[Limit, ...]:
    if not plan.has_metric(metric):
        metrics = ", ".join(sorted(plan.metrics)) or "none"
        raise InvalidArgument(
            f"metric {metric!r} is not part of plan {plan.name!r} (its metrics: {metrics})"
        )
    return plan.limits_for(metric)


def spend_call(
    rule: SpendRule | None, metric: str, limits: Sequence[Limit], now: datetime
) -> SpendCall | None:
    """The spend-cap part of a call: None without a cap or for a metric that is free."""
    index = None if rule is None else rule.index_of(metric)
    if rule is None or index is None:
        return None
    start, reset = window_bounds(Window.MONTH, int(now.timestamp()))
    month = [i for i, limit in enumerate(limits) if limit.window is Window.MONTH]
    return SpendCall(
        rule=rule,
        metric_index=index,
        month_start=start,
        expires_at_ms=_epoch_ms(reset + COUNTER_GRACE),
        self_limit=month[0] if month else None,
    )


@functools.lru_cache(maxsize=256)
def window_bounds(window: Window, second: int) -> tuple[int, datetime]:
    """(start as unix seconds, reset) of the window holding the unix second ``second``.

    Every window is a whole number of seconds aligned to UTC, so the bounds depend on the
    second only; caching them keeps calendar arithmetic off the hot path.
    """
    at = datetime.fromtimestamp(second, UTC)
    return int(window_start(window, at).timestamp()), window_reset(window, at)


@dataclass(frozen=True)
class _Windows:
    """What a request needs to know about its limits' windows at one UTC second."""

    counters: tuple[CounterLimit, ...]
    resets: tuple[datetime, ...]
    hour_start: int
    dedup_expires_at_ms: int


@functools.lru_cache(maxsize=1024)
def _windows_at(limits: tuple[Limit, ...], second: int, request_id_ttl: int) -> _Windows:
    """Cached per (limits, second): every request of one second shares the window arithmetic."""
    bounds = [window_bounds(limit.window, second) for limit in limits]
    at = datetime.fromtimestamp(second, UTC)
    dedup_until = at + timedelta(seconds=request_id_ttl)
    return _Windows(
        counters=tuple(
            CounterLimit(
                window=limit.window,
                window_start=start,
                limit=limit.limit,
                bill=limit.overage is Overage.BILL,
                expires_at_ms=_epoch_ms(reset + COUNTER_GRACE),
                shadow=limit.shadow,
            )
            for limit, (start, reset) in zip(limits, bounds, strict=True)
        ),
        resets=tuple(reset for _, reset in bounds),
        hour_start=window_bounds(Window.HOUR, second)[0],
        dedup_expires_at_ms=_epoch_ms(dedup_until),
    )


def _windows(limits: Sequence[Limit], now: datetime, request_id_ttl: int) -> _Windows:
    return _windows_at(tuple(limits), int(now.timestamp()), request_id_ttl)


def consume_call(
    request: QuotaRequest,
    windows: _Windows,
    limits: tuple[Limit, ...],
    spend: SpendCall | None = None,
) -> ConsumeCall:
    """The counter-store call for a request in these windows."""
    keeps_record = request.request_id is not None and not request.dry_run
    return ConsumeCall(
        tenant_id=request.tenant_id,
        metric=request.metric,
        cost=request.cost,
        limits=windows.counters,
        hour_start=windows.hour_start,
        dedup_expires_at_ms=windows.dedup_expires_at_ms,
        request_id=request.request_id,
        dry_run=request.dry_run,
        first_request=FirstRequest(request.metric, request.cost, limits, windows.resets)
        if keeps_record
        else None,
        spend=spend,
    )


def decision_of(
    request: QuotaRequest,
    limits: Sequence[Limit],
    result: ConsumeResult,
    resets: Sequence[datetime],
    now: datetime,
    rule: SpendRule | None = None,
) -> Decision:
    """The Decision for the counter store's answer (``resets``: each limit's window end)."""
    states = tuple(
        _limit_state(limit, used, reset)
        for limit, used, reset in zip(limits, result.used, resets, strict=True)
    )
    shadow_denied = tuple(limits[i].name for i in result.shadow_denied if i < len(limits))
    spend_cap, spend_total = _spend(rule, result.spend_total)
    if not result.allowed:
        return Decision(
            allowed=False,
            code=DecisionCode.SPEND_CAP if result.spend_denied else DecisionCode.OVER_LIMIT,
            cost=request.cost,
            limits=states,
            retry_after=window_reset(Window.MONTH, now) - now
            if result.spend_denied
            else _retry_after(request.cost, limits, result.used, resets, now),
            replayed=result.replayed,
            shadow_denied=shadow_denied,
            spend_cap=spend_cap,
            spend_total=spend_total,
        )
    return Decision(
        allowed=True,
        code=DecisionCode.OK,
        cost=request.cost,
        limits=states,
        overage=result.overage,
        replayed=result.replayed,
        shadow_denied=shadow_denied,
        spend_cap=spend_cap,
        spend_total=spend_total,
    )


def _spend(rule: SpendRule | None, total: int | None) -> tuple[Decimal | None, Decimal | None]:
    """(cap, the month's invoice total) as amounts; (None, None) when the cap did not apply."""
    if rule is None or total is None:
        return None, None
    return rule.amount(rule.cap_minor), rule.amount(total)


def _limit_state(limit: Limit, used: int, reset: datetime) -> LimitState:
    bill = limit.overage is Overage.BILL
    return LimitState(
        metric=limit.metric,
        window=limit.window.value,
        limit=limit.limit,
        remaining=max(0, limit.limit - used),
        reset_at=reset,
        overage_policy=limit.overage.value,
        overage=max(0, used - limit.limit) if bill else 0,
        shadow=limit.shadow,
        used=used,
    )


def _retry_after(
    cost: int,
    limits: Sequence[Limit],
    used: Sequence[int],
    resets: Sequence[datetime],
    now: datetime,
) -> timedelta:
    blocking = [
        reset
        for limit, count, reset in zip(limits, used, resets, strict=True)
        if limit.overage is Overage.BLOCK and not limit.shadow and count + cost > limit.limit
    ]
    return max(blocking, default=now) - now


def _epoch_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)
