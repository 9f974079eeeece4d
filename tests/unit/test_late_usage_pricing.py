"""Late usage rules (domain/billing/late_usage.py): what is late, and its incremental price.

The property that makes the money exact: a period's primary invoice plus its supplementary
invoices add up, to the minor unit, to one invoice for all the period's usage, whatever the
charge model (volume tiers included, where the increment may be a credit) and the plan segments.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from quotaplane.domain.billing.late_usage import late_units, supplementary_invoice
from quotaplane.domain.billing.ports import StoredInvoice
from quotaplane.domain.billing.pricing import (
    BASE_FEE,
    PricedInvoice,
    Segment,
    price_invoice,
    price_period,
)
from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.domain.plans.model import Plan
from quotaplane.domain.windows import Period
from tests.unit.test_pricing import PRORATED, plans, quantities

NOV = Period(2026, 11)
MID = datetime(2026, 11, 11, tzinfo=UTC)


def stored(priced: PricedInvoice, status: InvoiceStatus = InvoiceStatus.FINALIZED) -> StoredInvoice:
    return StoredInvoice(
        id=f"inv-{id(priced)}",
        tenant_id="t",
        period=str(priced.period),
        version=1,
        status=status,
        currency=priced.currency,
        lines=priced.lines,
        subtotal=priced.subtotal,
        total=priced.total,
        total_minor=priced.total_minor,
        created_at=NOV.start,
    )


def test_nothing_is_late_before_the_period_has_a_frozen_invoice() -> None:
    draft = stored(price_period(NOV, PRORATED.get("basic"), {"requests": 10}), InvoiceStatus.DRAFT)
    assert late_units({"requests": 50}, [draft]) == {}


def test_late_units_are_ledger_units_minus_billed_units_per_metric() -> None:
    first = stored(price_period(NOV, PRORATED.get("basic"), {"requests": 10}))
    assert late_units({"requests": 50, "rating.bulk": 3}, [first]) == {
        "rating.bulk": 3,
        "requests": 40,
    }
    assert late_units({"requests": 10}, [first]) == {}


def test_without_late_usage_there_is_no_supplementary_invoice() -> None:
    plan = PRORATED.get("basic")
    first = stored(price_period(NOV, plan, {"requests": 4000}))
    assert supplementary_invoice(price_period(NOV, plan, {"requests": 4000}), [first]) is None


def test_the_increment_crosses_included_units_and_keeps_the_base_fee_once() -> None:
    plan = PRORATED.get("basic")  # 30.00 base, 3,000 included, then 0.01 per unit
    first = stored(price_period(NOV, plan, {"requests": 2500}))  # 30.00: all included
    late = supplementary_invoice(price_period(NOV, plan, {"requests": 3700}), [first])
    assert late is not None
    assert [(line.metric, line.quantity, line.amount) for line in late.lines] == [
        ("requests", 1200, Decimal("7.00"))  # 500 of the late 1,200 were still included
    ]
    assert (late.total, late.total_minor) == (Decimal("7.00"), 700)


@given(plan=plans(), first=quantities, more=st.lists(quantities, min_size=1, max_size=3))
def test_invoices_of_a_period_add_up_to_one_invoice_for_all_usage(
    plan: Plan, first: int, more: list[int]
) -> None:
    billed = [stored(price_period(NOV, plan, {"requests": first}))]
    total = first
    for units in more:
        total += units
        late = supplementary_invoice(price_period(NOV, plan, {"requests": total}), billed)
        assert (late is None) == (units == 0)
        if late is not None:
            assert sum(line.quantity for line in late.lines) == units
            assert BASE_FEE not in {line.metric for line in late.lines}
            billed.append(stored(late))
    whole = price_period(NOV, plan, {"requests": total})
    assert sum(i.total_minor for i in billed) == whole.total_minor
    assert sum((i.total for i in billed), Decimal(0)) == whole.total


@given(before=quantities, after=quantities, late_before=quantities, late_after=quantities)
def test_the_sum_holds_across_plan_segments(
    before: int, after: int, late_before: int, late_after: int
) -> None:
    def priced(first_half: int, second_half: int) -> PricedInvoice:
        return price_invoice(
            NOV,
            [
                Segment(PRORATED.get("basic"), NOV.start, MID, {"requests": first_half}),
                Segment(PRORATED.get("plus"), MID, NOV.end, {"requests": second_half}),
            ],
        )

    first = stored(priced(before, after))
    whole = priced(before + late_before, after + late_after)
    late = supplementary_invoice(whole, [first])
    if late_before + late_after == 0:
        assert late is None
        return
    assert late is not None
    assert first.total_minor + late.total_minor == whole.total_minor
