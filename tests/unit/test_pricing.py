"""Pricing: every charge model with hand-checked numbers, proration, and properties."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotaplane.domain.billing.pricing import (
    BASE_FEE,
    Segment,
    TierLine,
    base_fee_line,
    charge_amount,
    graduated_tiers,
    price_invoice,
    price_metric,
    price_period,
)
from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.plans.model import (
    Charge,
    Graduated,
    MetricPlan,
    Package,
    PerUnit,
    Plan,
    Tier,
    Volume,
)
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import load_default_plans, load_plans, parse_plans

FULL = load_plans(Path(__file__).parent / "plans" / "full.yaml")
SEED = load_default_plans()
NOV = Period(2026, 11)


def utc(year: int, month: int, day: int, *time: int) -> datetime:
    hour, minute, second, microsecond = (*time, 0, 0, 0, 0)[:4]
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def plan_with(charge: Charge | None, *, currency: str = "USD", included: int = 0) -> Plan:
    metric = MetricPlan("requests", charge=charge, included=included)
    return Plan("test", currency, Decimal(0), {"requests": metric})


# --- the seed's package pricing ---


@pytest.mark.parametrize(
    ("plan", "quantity", "amount"),
    [
        ("growth", 12345, "0.52"),  # 13 started packages x 0.04
        ("starter", 10000, "0.50"),
        ("starter", 10001, "0.55"),
        ("starter", 0, "0.00"),
        ("enterprise", 1, "0.03"),
    ],
)
def test_seed_packages(plan: str, quantity: int, amount: str) -> None:
    assert str(price_metric(SEED.get(plan), "requests", quantity).amount) == amount


def test_seed_line_reads_like_the_seed() -> None:
    line = price_metric(SEED.get("growth"), "requests", 12345)
    assert (line.description, line.unit_price, line.amount_minor) == (
        "13 x 1,000 requests (growth)",
        Decimal("0.04"),
        52,
    )


def test_seed_invoice_totals() -> None:
    invoice = price_period(NOV, SEED.get("growth"), {"requests": 12345})
    assert (str(invoice.subtotal), str(invoice.total), invoice.total_minor) == ("0.52", "0.52", 52)


def test_seed_invoice_without_usage_has_a_zero_line() -> None:
    invoice = price_period(NOV, SEED.get("starter"), {})
    assert [(line.metric, str(line.amount)) for line in invoice.lines] == [("requests", "0.00")]
    assert str(invoice.total) == "0.00"


# --- per unit, package, graduated, volume ---


def test_per_unit() -> None:
    line = price_metric(FULL.get("pro"), "rating.bulk", 1234)  # 1234 x 0.002 = 2.468
    assert (line.amount, line.unit_price, line.tiers) == (Decimal("2.47"), Decimal("0.002"), ())


def test_package_counts_a_started_package_whole() -> None:
    line = price_metric(FULL.get("volume-plan"), "exports", 1001)  # 3 x 1.25
    assert (line.amount, line.description) == (Decimal("3.75"), "3 x 500 exports (volume-plan)")


def test_graduated_tiers_after_included_units() -> None:
    # 112,345 - 10,000 included = 102,345 billable:
    # 100,000 x 0.0005 = 50.0000; 2,345 x 0.0003 + 1.00 = 1.7035; 51.7035 -> 51.70
    line = price_metric(FULL.get("pro"), "requests", 112345)
    assert (line.included, line.billable, line.amount) == (10000, 102345, Decimal("51.70"))
    assert line.tiers == (
        TierLine(1, 100000, 100000, Decimal("0.0005"), Decimal(0), Decimal("50.0000")),
        TierLine(100001, None, 2345, Decimal("0.0003"), Decimal("1.00"), Decimal("1.7035")),
    )


def test_graduated_flat_fee_only_when_a_unit_reaches_the_tier() -> None:
    pro = FULL.get("pro")
    amounts = [price_metric(pro, "requests", q).amount for q in (110000, 110001)]
    assert amounts == [Decimal("50.00"), Decimal("51.00")]  # 50 + 0.0003 + 1.00 = 51.0003


def test_usage_within_included_units_is_free() -> None:
    line = price_metric(FULL.get("pro"), "requests", 5000)
    assert (line.included, line.billable, line.amount, line.tiers) == (5000, 0, Decimal("0.00"), ())


@pytest.mark.parametrize(
    ("quantity", "amount"),
    [(1000, "10.00"), (1001, "10.51"), (20000, "100.00")],  # 1001 x 0.008 + 2.50 = 10.508
)
def test_volume_prices_every_unit_at_the_reached_tier(quantity: int, amount: str) -> None:
    assert str(price_metric(FULL.get("volume-plan"), "requests", quantity).amount) == amount


def test_volume_breakdown_is_the_reached_tier() -> None:
    line = price_metric(FULL.get("volume-plan"), "requests", 1001)
    assert line.tiers == (
        TierLine(1001, 10000, 1001, Decimal("0.008"), Decimal("2.50"), Decimal("10.508")),
    )


def test_volume_discount_can_lower_the_total_at_a_boundary_by_design() -> None:
    tiers = (Tier(1000, Decimal("0.01")), Tier(None, Decimal("0.005")))
    plan = plan_with(Volume(tiers))
    assert price_metric(plan, "requests", 1001).amount < price_metric(plan, "requests", 1000).amount


@pytest.mark.parametrize(("quantity", "yen"), [(3, 2), (4, 2), (5, 3)])  # 1.5 -> 2, 2.5 -> 3
def test_jpy_rounds_half_up_to_whole_yen(quantity: int, yen: int) -> None:
    line = price_metric(FULL.get("tokyo"), "requests", quantity)
    assert (line.amount, line.amount_minor) == (Decimal(yen), yen)


def test_a_line_rounds_half_up_not_to_even() -> None:
    line = price_metric(plan_with(PerUnit(Decimal("0.005"))), "requests", 1)
    assert line.amount == Decimal("0.01")


def test_a_line_is_rounded_once_not_per_tier() -> None:
    tiers = (Tier(1, Decimal("0.005")), Tier(None, Decimal("0.005")))
    line = price_metric(plan_with(Graduated(tiers)), "requests", 2)  # 0.005 + 0.005, not 2 x 0.01
    assert line.amount == Decimal("0.01")


def test_kwd_rounds_to_three_places() -> None:
    line = price_metric(plan_with(PerUnit(Decimal("0.0005")), currency="KWD"), "requests", 3)
    assert line.amount == Decimal("0.002")  # 0.0015 -> 0.002


def test_a_metric_the_plan_does_not_charge_is_listed_at_zero() -> None:
    invoice = price_period(NOV, SEED.get("growth"), {"rating.bulk": 7})
    bulk = next(line for line in invoice.lines if line.metric == "rating.bulk")
    assert (bulk.quantity, bulk.amount, bulk.description) == (
        7,
        Decimal("0.00"),
        "7 rating.bulk, not charged (growth)",
    )


@pytest.mark.parametrize("bad", [-1, True, 10**16])
def test_bad_quantities_are_refused(bad: int) -> None:
    with pytest.raises(InvalidArgument, match="usage of 'requests'"):
        price_metric(SEED.get("growth"), "requests", bad)


# --- invoices, base fees and proration ---


def test_full_month_invoice_with_base_fee() -> None:
    invoice = price_period(NOV, FULL.get("pro"), {"requests": 112345, "rating.bulk": 1234})
    assert [(line.metric, line.amount) for line in invoice.lines] == [
        (BASE_FEE, Decimal("49.00")),
        ("rating.bulk", Decimal("2.47")),
        ("requests", Decimal("51.70")),
    ]
    assert (invoice.currency, invoice.total, invoice.total_minor) == (
        "EUR",
        Decimal("103.17"),
        10317,
    )


PRORATED = parse_plans(
    """
plans:
  basic:
    base_fee: "30.00"
    metrics: {requests: {included: 3000, charge: {model: per_unit, unit_price: "0.01"}}}
  plus:
    base_fee: "60.00"
    metrics: {requests: {included: 6000, charge: {model: per_unit, unit_price: "0.005"}}}
""",
    "prorated.yaml",
)


def test_plan_change_mid_period_prorates_base_fee_and_included_units() -> None:
    # 10 of 30 days on basic, 20 on plus.
    # basic: 30.00/3 = 10.00; 1500 - 1000 included = 500 x 0.01 = 5.00
    # plus: 60.00*2/3 = 40.00; 5000 - 4000 included = 1000 x 0.005 = 5.00
    invoice = price_invoice(
        NOV,
        [
            Segment(PRORATED.get("basic"), utc(2026, 11, 1), utc(2026, 11, 11), {"requests": 1500}),
            Segment(PRORATED.get("plus"), utc(2026, 11, 11), utc(2026, 12, 1), {"requests": 5000}),
        ],
    )
    assert [(line.plan, line.metric, line.included, line.amount) for line in invoice.lines] == [
        ("basic", BASE_FEE, 0, Decimal("10.00")),
        ("basic", "requests", 1000, Decimal("5.00")),
        ("plus", BASE_FEE, 0, Decimal("40.00")),
        ("plus", "requests", 4000, Decimal("5.00")),
    ]
    assert invoice.total == Decimal("60.00")


def test_segment_lines_carry_their_fraction_and_span() -> None:
    segment = Segment(PRORATED.get("basic"), utc(2026, 11, 1), utc(2026, 11, 11), {})
    line = price_invoice(NOV, [segment]).lines[0]
    assert str(line.fraction).startswith("0.33333333333333333333")
    assert (line.span_start, line.span_end) == (utc(2026, 11, 1), utc(2026, 11, 11))
    assert line.description == "Base fee (basic, 33.33% of the period)"


def test_prorated_base_fee_is_rounded_once() -> None:
    # One day of December (31 days): 30.00 / 31 = 0.9677... -> 0.97
    dec = Period(2026, 12)
    segment = Segment(PRORATED.get("basic"), utc(2026, 12, 31), utc(2027, 1, 1), {})
    assert price_invoice(dec, [segment]).lines[0].amount == Decimal("0.97")


def test_prorated_included_units_round_half_up_to_whole_units() -> None:
    # 9 minutes of November's 43,200: 3000 included x 9 / 43,200 = 0.625 -> 1 unit
    start, end = utc(2026, 11, 1), utc(2026, 11, 1, 0, 9)
    segment = Segment(PRORATED.get("basic"), start, end, {"requests": 5})
    assert price_invoice(NOV, [segment]).lines[1].included == 1


def test_prorated_included_units_round_down_below_a_half() -> None:
    # 4 minutes: 3000 x 4 / 43,200 = 0.277... -> 0 units, so all 5 are billed
    start, end = utc(2026, 11, 1), utc(2026, 11, 1, 0, 4)
    segment = Segment(PRORATED.get("basic"), start, end, {"requests": 5})
    assert price_invoice(NOV, [segment]).lines[1].billable == 5


def test_base_fee_line_for_a_fraction() -> None:
    line = base_fee_line(FULL.get("pro"), Decimal("0.5"))
    assert (line.amount, line.amount_minor, line.metric) == (Decimal("24.50"), 2450, BASE_FEE)


def test_a_gap_before_the_first_segment_is_not_billed() -> None:
    late = Segment(PRORATED.get("plus"), utc(2026, 11, 21), utc(2026, 12, 1), {})
    assert price_invoice(NOV, [late]).lines[0].amount == Decimal("20.00")  # 10 of 30 days


@pytest.mark.parametrize(
    ("segments", "match"),
    [
        ([], "at least one plan segment"),
        ([(utc(2026, 10, 31), utc(2026, 11, 5))], "inside period 2026-11"),
        ([(utc(2026, 11, 5), utc(2026, 11, 5))], "non-empty"),
        (
            [(utc(2026, 11, 1), utc(2026, 11, 10)), (utc(2026, 11, 9), utc(2026, 12, 1))],
            "overlapping",
        ),
        (
            [(utc(2026, 11, 10), utc(2026, 12, 1)), (utc(2026, 11, 1), utc(2026, 11, 10))],
            "in order",
        ),
    ],
)
def test_bad_segments_are_refused(segments: list[tuple[datetime, datetime]], match: str) -> None:
    plan = SEED.get("growth")
    with pytest.raises(InvalidArgument, match=match):
        price_invoice(NOV, [Segment(plan, start, end, {}) for start, end in segments])


def test_naive_segment_times_are_refused() -> None:
    segment = Segment(SEED.get("growth"), datetime(2026, 11, 1), utc(2026, 12, 1), {})
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        price_invoice(NOV, [segment])


def test_segments_in_different_currencies_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="bills in EUR"):
        price_invoice(
            NOV,
            [
                Segment(SEED.get("growth"), utc(2026, 11, 1), utc(2026, 11, 10), {}),
                Segment(FULL.get("pro"), utc(2026, 11, 10), utc(2026, 12, 1), {}),
            ],
        )


# --- properties ---

unit_prices = st.decimals(min_value=0, max_value=10, places=6)
fees = st.decimals(min_value=0, max_value=100, places=2)
quantities = st.integers(min_value=0, max_value=10**7)


@st.composite
def tier_lists(draw: st.DrawFn, *, non_decreasing: bool = False) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.integers(1, 10**6), max_size=3)))
    prices = draw(st.lists(unit_prices, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    flat = draw(st.lists(fees, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    if non_decreasing:
        prices, flat = sorted(prices), sorted(flat)
    return tuple(
        Tier(up_to, p, f) for up_to, p, f in zip([*bounds, None], prices, flat, strict=True)
    )


monotone_charges = st.one_of(
    st.builds(PerUnit, unit_prices),
    st.builds(Package, st.integers(1, 5000), fees),
    st.builds(Graduated, tier_lists()),
    st.builds(Volume, tier_lists(non_decreasing=True)),
)
charges = st.one_of(monotone_charges, st.builds(Volume, tier_lists()))


@st.composite
def plans(draw: st.DrawFn, charge: st.SearchStrategy[Charge] = charges) -> Plan:
    currency = draw(st.sampled_from(["USD", "JPY", "KWD"]))
    metric = MetricPlan("requests", draw(charge), draw(st.integers(0, 10**4)))
    base_fee = Decimal(draw(st.integers(0, 10**4)))  # whole units: valid in every currency
    return Plan("p", currency, base_fee, {"requests": metric})


@given(plan=plans(), usage=quantities)
def test_totals_are_never_negative(plan: Plan, usage: int) -> None:
    assert price_period(NOV, plan, {"requests": usage}).total >= 0


@given(plan=plans(monotone_charges), usage=quantities, more=quantities)
def test_totals_never_decrease_when_usage_grows(plan: Plan, usage: int, more: int) -> None:
    before = price_period(NOV, plan, {"requests": usage}).total
    assert price_period(NOV, plan, {"requests": usage + more}).total >= before


@given(plan=plans(), first=quantities, second=quantities, split=st.integers(1, 29))
def test_totals_equal_the_sum_of_their_lines(
    plan: Plan, first: int, second: int, split: int
) -> None:
    invoice = price_invoice(
        NOV,
        [
            Segment(plan, utc(2026, 11, 1), utc(2026, 11, split + 1), {"requests": first}),
            Segment(plan, utc(2026, 11, split + 1), utc(2026, 12, 1), {"requests": second}),
        ],
    )
    assert invoice.total == sum(line.amount for line in invoice.lines)
    assert invoice.total_minor == sum(line.amount_minor for line in invoice.lines)


@given(tiers=tier_lists(), first=quantities, second=quantities)
def test_graduated_price_is_additive_over_a_split(
    tiers: tuple[Tier, ...], first: int, second: int
) -> None:
    whole = charge_amount(Graduated(tiers), first + second)
    before = sum((line.amount for line in graduated_tiers(tiers, 0, first)), Decimal(0))
    marginal = sum(
        (line.amount for line in graduated_tiers(tiers, first, first + second)), Decimal(0)
    )
    assert whole == before + marginal


@given(tiers=tier_lists(), usage=quantities)
def test_graduated_breakdown_covers_every_billable_unit_once(
    tiers: tuple[Tier, ...], usage: int
) -> None:
    assert sum(line.quantity for line in graduated_tiers(tiers, 0, usage)) == usage
