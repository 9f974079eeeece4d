"""Spend caps: a plan's pricing compiled into integers the consume script evaluates exactly.

A plan's ``spend_cap`` denies a request of a charged metric when the month's invoice total
*after* the request would exceed the cap. The invoice total is the one ``pricing.py``
computes: the base fee line plus, per metric, ``round_money(charge(max(0, usage -
included)))`` (ROUND_HALF_UP once per line). The consume script decides it in the same
atomic step as the limits, from the month counters of every charged metric, so the check
must be exact in Lua, whose numbers are doubles. It is, because everything is an integer
below 2**53:

- Amounts are counted in *atoms*, 10**-6 of the currency's major unit: unit prices have at
  most 6 places and fees at most the currency's places, so every exact (unrounded) line
  amount is a whole number of atoms. ``divisor`` = atoms per minor unit (10**4 for USD).
- Each charged metric becomes a list of segments over its billable units ``b``; in the
  segment with ``lower < b <= upper``: ``atoms(b) = base + price * ceil((b - start) / step)``.
  graduated: one segment per tier, ``start = lower``, ``base`` = every earlier tier in full
  plus this tier's flat fee; volume: one per tier, ``start = 0``, ``base`` = the tier's flat
  fee; per_unit: one segment; package: one segment with ``step = package_size``.
  ``b = 0`` costs nothing (no tier's flat fee applies).
- The line in minor units is ``floor((2 * atoms + divisor) / (2 * divisor))``: ROUND_HALF_UP
  of the exact amount, as ``round_money``.
- Overflow is ruled out by clamping, not by luck: no line can matter beyond ``cap + 1``
  minor units, so each segment carries ``safe_steps``, the most steps whose amount stays
  within ``limit_atoms = (cap_minor + 1) * divisor``; more steps means the line alone is over
  the cap. Lines are taken as ``min(line, cap_minor + 1)``. With ``MAX_SPEND_CAP`` = 10**9
  major units, ``2 * limit_atoms + divisor`` stays below 2**53.

``line_minor`` and ``total_minor`` are the Python twins of the Lua code (the memory counter
store uses them; unit tests hold them against ``pricing.py`` for many usages).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from quotaplane.domain.billing.pricing import prorated_base_fee, prorated_included
from quotaplane.domain.money import minor_units, to_minor_units
from quotaplane.domain.plans.model import (
    UNIT_PRICE_PLACES,
    Charge,
    Graduated,
    Package,
    PerUnit,
    Plan,
    Tier,
)

ATOMS_PER_MAJOR = 10**UNIT_PRICE_PLACES
OPEN = -1  # ``upper`` of an open-ended segment, as the script receives it
ALWAYS_SAFE = 2**53 - 1  # ``safe_steps`` of a free segment: no usage is ever over


@dataclass(frozen=True)
class PriceSegment:
    """``atoms(b) = base + price * ceil((b - start) / step)`` for ``lower < b <= upper``."""

    lower: int
    upper: int  # OPEN: no upper bound
    start: int
    base: int
    price: int
    step: int
    safe_steps: int  # more steps than this: the line alone exceeds the cap; -1: always


@dataclass(frozen=True)
class MetricPricing:
    metric: str
    included: int
    segments: tuple[PriceSegment, ...]


@dataclass(frozen=True)
class SpendRule:
    """A plan's cap and charged metrics as the consume script evaluates them."""

    currency: str
    cap_minor: int
    base_fee_minor: int
    divisor: int  # atoms per minor unit
    metrics: tuple[MetricPricing, ...]  # every charged metric, by name

    def amount(self, minor: int) -> Decimal:
        """``minor`` units of the currency as an exact amount."""
        return Decimal(minor).scaleb(-minor_units(self.currency))

    def index_of(self, metric: str) -> int | None:
        """0-based position of ``metric`` among the charged metrics; None if it is free."""
        for index, pricing in enumerate(self.metrics):
            if pricing.metric == metric:
                return index
        return None


def spend_rule(plan: Plan, covered: int = 1, whole: int = 1) -> SpendRule | None:
    """The plan's spend cap compiled (see the module docstring); None without a cap.

    ``covered / whole``: the share of the period the plan is billed for (a tenant created
    during the period), which prorates the base fee and the included units exactly as the
    invoice does (``pricing.prorated_base_fee``, ``pricing.prorated_included``).
    """
    if plan.spend_cap is None:
        return None
    places = minor_units(plan.currency)
    divisor = 10 ** (UNIT_PRICE_PLACES - places)
    cap_minor = to_minor_units(plan.spend_cap, plan.currency)
    limit = (cap_minor + 1) * divisor
    metrics = tuple(
        MetricPricing(
            name,
            prorated_included(metric.included, covered, whole),
            _segments(metric.charge, limit),
        )
        for name, metric in sorted(plan.metrics.items())
        if metric.charge is not None
    )
    base_fee = to_minor_units(prorated_base_fee(plan, covered, whole), plan.currency)
    return SpendRule(plan.currency, cap_minor, base_fee, divisor, metrics)


def line_minor(rule: SpendRule, pricing: MetricPricing, usage: int) -> int:
    """One metric's invoice line in minor units, at most ``cap_minor + 1`` (as the script)."""
    over = rule.cap_minor + 1
    billable = max(0, usage - pricing.included)
    if billable == 0:
        return 0
    for segment in pricing.segments:
        if billable > segment.lower and (segment.upper == OPEN or billable <= segment.upper):
            steps = -(-(billable - segment.start) // segment.step)
            if steps > segment.safe_steps:
                return over
            atoms = segment.base + segment.price * steps
            return min(over, (2 * atoms + rule.divisor) // (2 * rule.divisor))
    raise AssertionError("the last segment is open-ended")


def total_minor(rule: SpendRule, usage: Mapping[str, int]) -> int:
    """The month's invoice total in minor units (lines clamped as in the script)."""
    return rule.base_fee_minor + sum(
        line_minor(rule, pricing, usage.get(pricing.metric, 0)) for pricing in rule.metrics
    )


def _atoms(amount: Decimal) -> int:
    scaled = amount.scaleb(UNIT_PRICE_PLACES)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than {UNIT_PRICE_PLACES} decimal places")
    return int(scaled)


def _segments(charge: Charge | None, limit: int) -> tuple[PriceSegment, ...]:
    if isinstance(charge, PerUnit):
        return (_segment(0, OPEN, 0, 0, _atoms(charge.unit_price), 1, limit),)
    if isinstance(charge, Package):
        price = _atoms(charge.package_price)
        return (_segment(0, OPEN, 0, 0, price, charge.package_size, limit),)
    if charge is None:
        return ()
    return _tier_segments(charge.tiers, isinstance(charge, Graduated), limit)


def _tier_segments(tiers: Sequence[Tier], graduated: bool, limit: int) -> tuple[PriceSegment, ...]:
    segments = []
    lower = 0
    below = 0  # graduated: the atoms of every earlier tier in full
    for tier in tiers:
        upper = OPEN if tier.up_to is None else tier.up_to
        price, flat = _atoms(tier.unit_price), _atoms(tier.flat_fee)
        start, base = (lower, below + flat) if graduated else (0, flat)
        segments.append(_segment(lower, upper, start, base, price, 1, limit))
        if tier.up_to is None:
            break
        below += flat + price * (tier.up_to - lower)
        lower = tier.up_to
    return tuple(segments)


def _segment(
    lower: int, upper: int, start: int, base: int, price: int, step: int, limit: int
) -> PriceSegment:
    """A segment with its amounts clamped to ``limit + 1`` atoms (beyond, only "over" matters)."""
    if base > limit:
        safe = -1
    elif price == 0:
        safe = ALWAYS_SAFE
    else:
        safe = (limit - base) // price
    return PriceSegment(
        lower, upper, start, min(base, limit + 1), min(price, limit + 1), step, safe
    )
