"""The period close's pure rules: which period is due at an instant, and who it bills."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from quotaplane.domain.billing.period_close import CloseCandidate, bills, due_period
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans

HOUR = timedelta(hours=1)
PLANS = parse_plans(
    "plans:\n  growth: {price_per_1000_requests: 0.04, monthly_quota: 50000}\n"
    '  pro: {base_fee: "49.00", metrics: {requests: {charge: {model: per_unit, '
    'unit_price: "0.001"}}}}\n',
    "plans.yaml",
)


@pytest.mark.parametrize(
    ("now", "due"),
    [
        (datetime(2026, 11, 1, 0, 59, 59, tzinfo=UTC), Period(2026, 9)),  # grace not over
        (datetime(2026, 11, 1, 1, 0, 0, tzinfo=UTC), Period(2026, 10)),  # end + grace
        (datetime(2026, 11, 20, tzinfo=UTC), Period(2026, 10)),
        (datetime(2027, 1, 1, 1, tzinfo=UTC), Period(2026, 12)),  # across the year
    ],
)
def test_a_period_is_due_once_its_end_plus_grace_has_passed(now: datetime, due: Period) -> None:
    assert due_period(now, HOUR) == due


def test_without_grace_a_period_is_due_at_its_end() -> None:
    assert due_period(datetime(2026, 11, 1, tzinfo=UTC), timedelta(0)) == Period(2026, 10)


@pytest.mark.parametrize(
    ("plan", "has_usage", "billed"),
    [
        ("growth", True, True),
        ("growth", False, False),  # nothing to bill: no invoice
        ("pro", False, True),  # the base fee is due anyway
        ("gone", False, True),  # GenerateInvoice reports the missing plan
    ],
)
def test_who_a_period_bills(plan: str, has_usage: bool, billed: bool) -> None:
    assert bills(CloseCandidate("t", "n", plan, has_usage), PLANS) is billed
