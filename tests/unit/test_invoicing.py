"""Plan segments and the split of hourly usage between them (pure domain, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from quotaplane.domain.billing.invoicing import plan_spans, split_usage
from quotaplane.domain.billing.ports import HourlyUsage, PlanChange
from quotaplane.domain.billing.pricing import Segment, price_invoice
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans

NOV = Period(2026, 11)
MID = datetime(2026, 11, 16, tzinfo=UTC)


def _at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def test_no_plan_history_bills_the_current_plan_all_period() -> None:
    assert plan_spans(NOV, [], "growth") == [(NOV.start, NOV.end, "growth")]


def test_a_plan_from_before_the_period_covers_it_all() -> None:
    changes = [PlanChange("starter", datetime(2026, 1, 5, tzinfo=UTC))]
    assert plan_spans(NOV, changes, "starter") == [(NOV.start, NOV.end, "starter")]


def test_a_change_mid_period_cuts_it_in_two() -> None:
    changes = [PlanChange("starter", datetime(2026, 1, 5, tzinfo=UTC)), PlanChange("growth", MID)]
    assert plan_spans(NOV, changes, "growth") == [
        (NOV.start, MID, "starter"),
        (MID, NOV.end, "growth"),
    ]


def test_a_tenant_created_mid_period_is_billed_from_its_creation() -> None:
    assert plan_spans(NOV, [PlanChange("growth", MID)], "growth") == [(MID, NOV.end, "growth")]


def test_changes_after_the_period_do_not_count() -> None:
    changes = [PlanChange("starter", NOV.start), PlanChange("growth", NOV.end)]
    assert plan_spans(NOV, changes, "growth") == [(NOV.start, NOV.end, "starter")]


def test_a_period_before_the_first_plan_has_no_span() -> None:
    assert plan_spans(NOV, [PlanChange("growth", NOV.end + timedelta(days=1))], "growth") == []


def test_changes_at_one_instant_keep_the_last_and_equal_plans_merge() -> None:
    changes = [
        PlanChange("starter", NOV.start),
        PlanChange("growth", MID),
        PlanChange("starter", MID),
        PlanChange("starter", _at(20)),
    ]
    assert plan_spans(NOV, changes, "starter") == [(NOV.start, NOV.end, "starter")]


def test_an_hour_is_billed_under_the_plan_in_force_at_its_start() -> None:
    spans = [(NOV.start, MID, "starter"), (MID, NOV.end, "growth")]
    usage = [
        HourlyUsage("requests", _at(15, 23), 5),
        HourlyUsage("requests", _at(16, 0), 7),
        HourlyUsage("requests", _at(30, 23), 1),
    ]
    assert split_usage(spans, usage) == [{"requests": 5}, {"requests": 8}]


def test_usage_before_the_first_span_goes_to_it() -> None:
    spans = [(MID, NOV.end, "growth")]
    assert split_usage(spans, [HourlyUsage("requests", _at(2), 3)]) == [{"requests": 3}]


PLANS = parse_plans(
    """
plans:
  starter: {price_per_1000_requests: 0.05, monthly_quota: 10000}
  growth:  {price_per_1000_requests: 0.04, monthly_quota: 50000}
""",
    "test",
)


def test_a_prorated_invoice_prices_each_segment_under_its_plan() -> None:
    changes = [PlanChange("starter", NOV.start), PlanChange("growth", MID)]
    spans = plan_spans(NOV, changes, "growth")
    usage = [HourlyUsage("requests", _at(2), 1500), HourlyUsage("requests", _at(20), 2500)]
    segments = [
        Segment(PLANS.get(plan), start, end, metrics)
        for (start, end, plan), metrics in zip(spans, split_usage(spans, usage), strict=True)
    ]
    invoice = price_invoice(NOV, segments)
    # starter: 2 packages x 0.05; growth: 3 packages x 0.04
    assert [line.amount for line in invoice.lines] == [Decimal("0.10"), Decimal("0.12")]
    assert invoice.total == Decimal("0.22")


hours = st.integers(min_value=0, max_value=30 * 24 - 1).map(
    lambda h: NOV.start + timedelta(hours=h)
)


@given(
    cuts=st.lists(hours, max_size=5),
    rows=st.lists(st.tuples(hours, st.integers(1, 10_000)), max_size=30),
)
def test_splitting_never_loses_or_invents_usage(
    cuts: list[datetime], rows: list[tuple[datetime, int]]
) -> None:
    changes = [PlanChange("starter", NOV.start)] + [
        PlanChange("growth" if i % 2 == 0 else "starter", at) for i, at in enumerate(sorted(cuts))
    ]
    spans = plan_spans(NOV, changes, "starter")
    usage = [HourlyUsage("requests", at, units) for at, units in rows]
    split = split_usage(spans, usage)
    assert sum(part.get("requests", 0) for part in split) == sum(units for _, units in rows)
    assert spans[0][0] == NOV.start and spans[-1][1] == NOV.end
    assert all(start < end for start, end, _ in spans)
    assert all(a[1] == b[0] and a[2] != b[2] for a, b in pairwise(spans))
