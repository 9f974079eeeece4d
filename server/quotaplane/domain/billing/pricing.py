"""Pricing: a period's usage under its plans -> invoice lines and totals, in Decimal.

The rules (the ledger and Stripe only ever see their results):

- A usage line prices one metric in one plan segment. ``billable = max(0, usage -
  included)``; the metric's charge model prices the billable units (see ``domain/plans/model.py``);
  the exact amount is rounded ONCE per line with :func:`money.round_money`
  (ROUND_HALF_UP to the currency's minor unit). Tier amounts in the breakdown stay exact.
- The plan's base fee is a line of its own; a plan without base fee has no such line.
- Plan change mid-period (proration by time): the period is split into segments, each
  with the plan in force and the usage that happened in it. ``fraction = segment length
  / period length``. The base fee line is ``round_money(base_fee * fraction)``; included
  units are ``included * fraction`` rounded half up to whole units; the usage of the
  segment is priced under that segment's plan, with tiers counted from zero in each
  segment (tiers and quotas are not scaled). Time before a tenant existed is simply not
  covered by any segment.
- Usage of a metric the plan does not charge for is listed at 0, never dropped.
- ``subtotal`` is the sum of the rounded lines; ``total = subtotal`` (no taxes or credits
  yet); ``total_minor`` is the total in minor units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, localcontext

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.money import MONEY_CONTEXT, decimal_str, round_money, to_minor_units
from quotaplane.domain.plans.model import Charge, Graduated, Package, PerUnit, Plan, Tier, Volume
from quotaplane.domain.windows import Period, as_utc

BASE_FEE = "base_fee"
MAX_QUANTITY = 10**15  # keeps every product exact in MONEY_CONTEXT
_ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class TierLine:
    """One tier as it applied to a line; ``amount = quantity * unit_price + flat_fee``."""

    first_unit: int  # 1-based, inclusive, in billable units
    last_unit: int | None  # inclusive; None for the open-ended last tier
    quantity: int
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal  # exact, unrounded


@dataclass(frozen=True)
class PricedLine:
    metric: str  # BASE_FEE for the base fee line
    plan: str
    description: str
    quantity: int  # usage in the span, before included units
    included: int  # units that were free
    unit_price: Decimal | None  # per unit or package; None for tiered and free lines
    tiers: tuple[TierLine, ...]  # breakdown for graduated and volume
    amount: Decimal  # rounded once, ROUND_HALF_UP to the currency
    amount_minor: int
    fraction: Decimal = Decimal(1)  # share of the period the plan was in force
    span_start: datetime | None = None
    span_end: datetime | None = None
    override: str = ""  # the tenant override key paths that changed this line, if any

    @property
    def billable(self) -> int:
        return self.quantity - self.included


@dataclass(frozen=True)
class Segment:
    """The plan in force over ``[start, end)`` and the usage (metric -> units) in it."""

    plan: Plan
    start: datetime
    end: datetime
    usage: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PricedInvoice:
    period: Period
    currency: str
    lines: tuple[PricedLine, ...]
    subtotal: Decimal
    total: Decimal
    total_minor: int
    plan_version: int = 0  # the plans version priced with (0: not a stored version)


def price_metric(plan: Plan, metric: str, quantity: int) -> PricedLine:
    """Price a whole period's usage of one metric under ``plan``."""
    metric_plan = plan.metrics.get(metric)
    included = metric_plan.included if metric_plan else 0
    charge = metric_plan.charge if metric_plan else None
    return _usage_line(plan, metric, _quantity(metric, quantity), included, charge)


def base_fee_line(plan: Plan, fraction: Decimal = Decimal(1)) -> PricedLine:
    """The base fee of ``plan`` for ``fraction`` of a period."""
    with localcontext(MONEY_CONTEXT):
        amount = round_money(plan.base_fee * fraction, plan.currency)
    return _base_fee(plan, amount, fraction)


def price_period(period: Period, plan: Plan, usage: Mapping[str, int]) -> PricedInvoice:
    """The common case: one plan in force for the whole period."""
    return price_invoice(period, [Segment(plan, period.start, period.end, usage)])


def price_invoice(period: Period, segments: Sequence[Segment]) -> PricedInvoice:
    """Price a period covered by one or more plan segments (see the module rules)."""
    _check_segments(period, segments)
    currency = segments[0].plan.currency
    lines = tuple(line for segment in segments for line in _segment_lines(period, segment))
    with localcontext(MONEY_CONTEXT):
        subtotal = sum((line.amount for line in lines), round_money(Decimal(0), currency))
    return PricedInvoice(
        period=period,
        currency=currency,
        lines=lines,
        subtotal=subtotal,
        total=subtotal,
        total_minor=to_minor_units(subtotal, currency),
    )


def graduated_tiers(tiers: Sequence[Tier], start: int, end: int) -> tuple[TierLine, ...]:
    """Graduated pricing of billable units ``start+1 .. end`` (a marginal range).

    A tier's flat fee belongs to the range holding the tier's first unit, so pricing
    ``0..a`` and then ``a..a+b`` adds up to pricing ``0..a+b`` exactly.
    """
    lines: list[TierLine] = []
    lower = 0
    for tier in tiers:
        upper = end if tier.up_to is None else tier.up_to
        quantity = max(0, min(end, upper) - max(start, lower))
        flat_fee = tier.flat_fee if start <= lower < end else Decimal(0)
        if quantity:
            lines.append(_tier_line(lower, tier, quantity, flat_fee))
        if tier.up_to is None or upper >= end:
            break
        lower = upper
    return tuple(lines)


def volume_tiers(tiers: Sequence[Tier], quantity: int) -> tuple[TierLine, ...]:
    """Volume pricing: every unit at the price of the tier the total falls in."""
    if quantity == 0:
        return ()
    lower = 0
    for tier in tiers:
        if tier.up_to is None or quantity <= tier.up_to:
            return (_tier_line(lower, tier, quantity, tier.flat_fee),)
        lower = tier.up_to
    raise InvalidArgument("volume tiers must end with an open-ended tier")


def charge_amount(charge: Charge | None, billable: int) -> Decimal:
    """The exact, unrounded price of ``billable`` units under ``charge``."""
    with localcontext(MONEY_CONTEXT):
        if charge is None:
            return Decimal(0)
        if isinstance(charge, PerUnit):
            return charge.unit_price * billable
        if isinstance(charge, Package):
            return charge.package_price * _packages(charge, billable)
        return sum((line.amount for line in _tiers(charge, billable)), Decimal(0))


def _usage_line(
    plan: Plan, metric: str, quantity: int, included: int, charge: Charge | None
) -> PricedLine:
    free = min(quantity, included)
    billable = quantity - free
    amount = round_money(charge_amount(charge, billable), plan.currency)
    tiers = _tiers(charge, billable) if isinstance(charge, Graduated | Volume) else ()
    return PricedLine(
        metric=metric,
        plan=plan.name,
        description=_describe(plan.name, metric, quantity, free, charge),
        quantity=quantity,
        included=free,
        unit_price=_unit_price(charge),
        tiers=tiers,
        amount=amount,
        amount_minor=to_minor_units(amount, plan.currency),
    )


def _tiers(charge: Graduated | Volume, billable: int) -> tuple[TierLine, ...]:
    if isinstance(charge, Graduated):
        return graduated_tiers(charge.tiers, 0, billable)
    return volume_tiers(charge.tiers, billable)


def _tier_line(lower: int, tier: Tier, quantity: int, flat_fee: Decimal) -> TierLine:
    with localcontext(MONEY_CONTEXT):
        amount = tier.unit_price * quantity + flat_fee
    return TierLine(lower + 1, tier.up_to, quantity, tier.unit_price, flat_fee, amount)


def _packages(charge: Package, billable: int) -> int:
    return -(-billable // charge.package_size)  # a started package counts whole


def _unit_price(charge: Charge | None) -> Decimal | None:
    if isinstance(charge, PerUnit):
        return charge.unit_price
    if isinstance(charge, Package):
        return charge.package_price
    return None


def _describe(plan: str, metric: str, quantity: int, free: int, charge: Charge | None) -> str:
    after = f" after {free:,} included" if free else ""
    if isinstance(charge, Package):
        packages = _packages(charge, quantity - free)
        what = f"{packages:,} x {charge.package_size:,} {metric}{after}"
    elif isinstance(charge, PerUnit):
        what = f"{quantity - free:,} {metric}{after} at {decimal_str(charge.unit_price)}"
    elif charge is None:
        what = f"{quantity:,} {metric}, not charged"
    else:
        what = f"{quantity - free:,} {metric}{after}, {charge.model} tiers"
    return f"{what} ({plan})"


def _base_fee(plan: Plan, amount: Decimal, fraction: Decimal) -> PricedLine:
    share = "" if fraction == 1 else f", {fraction * 100:.2f}% of the period"
    return PricedLine(
        metric=BASE_FEE,
        plan=plan.name,
        description=f"Base fee ({plan.name}{share})",
        quantity=1,
        included=0,
        unit_price=plan.base_fee,
        tiers=(),
        amount=amount,
        amount_minor=to_minor_units(amount, plan.currency),
        fraction=fraction,
    )


def _segment_lines(period: Period, segment: Segment) -> list[PricedLine]:
    plan = segment.plan
    covered = (segment.end - segment.start) // _ONE_MICROSECOND
    whole = period.duration // _ONE_MICROSECOND
    with localcontext(MONEY_CONTEXT):
        fraction = Decimal(covered) / Decimal(whole)
    base_fee = prorated_base_fee(plan, covered, whole)
    lines = [_base_fee(plan, base_fee, fraction)] if plan.base_fee else []
    charged = {name for name, metric in plan.metrics.items() if metric.charge is not None}
    for metric in sorted(charged | set(segment.usage)):
        metric_plan = plan.metrics.get(metric)
        full = metric_plan.included if metric_plan else 0
        included = prorated_included(full, covered, whole)
        quantity = _quantity(metric, segment.usage.get(metric, 0))
        charge = metric_plan.charge if metric_plan else None
        lines.append(_usage_line(plan, metric, quantity, included, charge))
    return [
        replace(line, fraction=fraction, span_start=segment.start, span_end=segment.end)
        for line in lines
    ]


def prorated_base_fee(plan: Plan, covered: int, whole: int) -> Decimal:
    """The base fee line of a segment covering ``covered`` of ``whole`` (any one unit)."""
    with localcontext(MONEY_CONTEXT):
        # Multiply before dividing: the one inexact step happens at 80 digits, far below
        # any minor unit, so round_money sees the exact half-way cases as they are.
        return round_money(plan.base_fee * covered / whole, plan.currency)


def prorated_included(included: int, covered: int, whole: int) -> int:
    """A segment's included units: ``included * covered / whole``, half up to whole units."""
    return (2 * included * covered + whole) // (2 * whole)


def _quantity(metric: str, quantity: int) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise InvalidArgument(f"usage of {metric!r} must be a whole number, got {quantity!r}")
    if not 0 <= quantity <= MAX_QUANTITY:
        raise InvalidArgument(f"usage of {metric!r} must be 0..{MAX_QUANTITY:,}, got {quantity}")
    return quantity


def _check_segments(period: Period, segments: Sequence[Segment]) -> None:
    if not segments:
        raise InvalidArgument(f"period {period}: at least one plan segment is needed")
    previous_end = period.start
    for index, segment in enumerate(segments):
        start = as_utc(segment.start, field_name=f"segments[{index}].start")
        end = as_utc(segment.end, field_name=f"segments[{index}].end")
        if not previous_end <= start < end <= period.end:
            raise InvalidArgument(
                f"segments[{index}] [{start.isoformat()}, {end.isoformat()}) must be non-empty, "
                f"in order, not overlapping and inside period {period}"
            )
        if segment.plan.currency != segments[0].plan.currency:
            raise InvalidArgument(
                f"segments[{index}]: plan {segment.plan.name!r} bills in "
                f"{segment.plan.currency}, the period in {segments[0].plan.currency}"
            )
        previous_end = end
