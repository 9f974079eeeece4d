"""The spend cap's compiled pricing (``domain/billing/spend_cap.py``) against ``pricing.py``.

For random plans (every charge model, included units, base fees, caps) and random usages, the
integer evaluation the consume script runs must give the invoice total GenerateInvoice computes,
to the minor unit, whenever that total is within the cap, and "over the cap" exactly when it
is over. The Lua twin of ``line_minor`` is held to the same rule against Redis in
``tests/integration/test_spend_caps.py``.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from quotaplane.domain.billing.pricing import price_period
from quotaplane.domain.billing.spend_cap import spend_rule, total_minor
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

PERIOD = Period.parse("2026-11")
CURRENCIES = {"USD": 2, "JPY": 0, "KWD": 3}


def _price(places: int) -> st.SearchStrategy[Decimal]:
    return st.integers(0, 5 * 10**places).map(lambda n: Decimal(n).scaleb(-places))


@st.composite
def tiers(draw: st.DrawFn, places: int) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.integers(1, 5000), min_size=0, max_size=4)))
    return tuple(
        Tier(up_to=bound, unit_price=draw(_price(6)), flat_fee=draw(_price(places)))
        for bound in [*bounds, None]
    )


@st.composite
def charges(draw: st.DrawFn, places: int) -> Charge | None:
    kind = draw(st.sampled_from(["per_unit", "package", "graduated", "volume", "free"]))
    if kind == "per_unit":
        return PerUnit(draw(_price(6)))
    if kind == "package":
        return Package(draw(st.integers(1, 1000)), draw(_price(places)))
    if kind == "graduated":
        return Graduated(draw(tiers(places)))
    if kind == "volume":
        return Volume(draw(tiers(places)))
    return None


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    currency = draw(st.sampled_from(sorted(CURRENCIES)))
    places = CURRENCIES[currency]
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    metrics = {
        name: MetricPlan(name, draw(charges(places)), draw(st.integers(0, 300))) for name in names
    }
    cap = Decimal(draw(st.integers(0, 10 ** (places + 3)))).scaleb(-places)
    return Plan("p", currency, draw(_price(places)), metrics, spend_cap=cap)


@settings(max_examples=400, deadline=None)
@given(plans(), st.data())
def test_the_compiled_total_is_the_invoice_total(plan: Plan, data: st.DataObject) -> None:
    rule = spend_rule(plan)
    assert rule is not None
    usage = {name: data.draw(st.integers(0, 20_000), label=name) for name in plan.metrics}
    invoice = price_period(PERIOD, plan, usage).total_minor
    compiled = total_minor(rule, usage)
    if invoice <= rule.cap_minor:
        assert compiled == invoice
    else:
        assert compiled > rule.cap_minor


def test_huge_usage_and_prices_stay_exact_integers_below_2_53() -> None:
    plan = Plan(
        "p",
        "USD",
        Decimal("0"),
        {"a": MetricPlan("a", PerUnit(Decimal("999.999999")))},
        spend_cap=Decimal(1_000_000_000),
    )
    rule = spend_rule(plan)
    assert rule is not None
    segment = rule.metrics[0].segments[0]
    assert 2 * (rule.cap_minor + 1) * rule.divisor + rule.divisor < 2**53
    assert segment.price < 2**53 and segment.base < 2**53
    assert total_minor(rule, {"a": 10**15}) == rule.cap_minor + 1  # over, not overflowed
    exact = price_period(PERIOD, plan, {"a": 1_000_000}).total_minor
    assert total_minor(rule, {"a": 1_000_000}) == exact


def test_a_half_cent_rounds_up_as_invoices_do() -> None:
    plan = Plan(
        "p",
        "USD",
        Decimal(0),
        {"a": MetricPlan("a", PerUnit(Decimal("0.005")))},
        spend_cap=Decimal("1.00"),
    )
    rule = spend_rule(plan)
    assert rule is not None
    assert total_minor(rule, {"a": 1}) == 1  # 0.005 -> 0.01
    assert total_minor(rule, {"a": 199}) == 100  # 0.995 -> 1.00, within the cap
    assert total_minor(rule, {"a": 201}) == 101  # 1.005 -> 1.01: over
