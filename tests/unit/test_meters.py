"""The pure rules of Stripe meter reporting: identifiers, Stripe's windows, metered plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from quotaplane.domain.billing.meters import (
    meter_identifier,
    metered_metrics,
    past_dedup,
    too_old,
)
from quotaplane.integrations.plans_file import parse_plans

HOUR = datetime(2026, 11, 3, 14, tzinfo=UTC)
TENANT = "6f1c2d3e-0000-4000-8000-00000000abcd"


def test_an_identifier_is_derived_from_ledger_ids_and_fits_stripes_100_characters() -> None:
    identifier = meter_identifier(TENANT, "r" * 64, HOUR, 10**18)
    assert identifier == meter_identifier(TENANT, "r" * 64, HOUR, 10**18)  # a resend: the same
    assert len(identifier) <= 100
    others = {
        meter_identifier(TENANT, "requests", HOUR, 10),
        meter_identifier(TENANT, "requests", HOUR, 11),
        meter_identifier(TENANT, "rating.bulk", HOUR, 10),
        meter_identifier(TENANT, "requests", HOUR + timedelta(hours=1), 10),
        meter_identifier(TENANT.replace("a", "b"), "requests", HOUR, 10),
    }
    assert len(others) == 5


def test_stripes_35_day_window_with_a_minute_of_margin() -> None:
    assert not too_old(HOUR, HOUR + timedelta(days=34, hours=23))
    assert too_old(HOUR, HOUR + timedelta(days=35))
    assert too_old(HOUR, HOUR + timedelta(days=35) - timedelta(seconds=30))


def test_a_send_may_be_retried_only_within_stripes_dedup_window() -> None:
    now = HOUR + timedelta(days=1)
    assert not past_dedup(None, now)
    assert not past_dedup(now - timedelta(hours=22), now)
    assert past_dedup(now - timedelta(hours=23, minutes=1), now)


def test_metered_metrics_name_only_plans_with_stripe_meters() -> None:
    catalog = parse_plans(
        "plans:\n"
        "  seed: {price_per_1000_requests: 0.05, monthly_quota: 10}\n"
        "  mixed:\n    metrics:\n"
        "      requests: {stripe_meter: openclaw_requests}\n"
        "      rating.bulk: {charge: {model: per_unit, unit_price: '0.01'}}\n",
        "plans.yaml",
    )
    assert metered_metrics(catalog) == {"mixed": {"requests": "openclaw_requests"}}
