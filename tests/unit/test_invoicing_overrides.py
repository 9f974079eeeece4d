"""Invoices under tenant overrides: the period is cut where the overrides changed, each part
priced under the effective plan of its time, and the lines an override changed name it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from quotaplane.domain.billing.invoicing import price_tenant_period, terms_spans
from quotaplane.domain.billing.ports import HourlyUsage, PlanChange
from quotaplane.domain.billing.pricing import BASE_FEE
from quotaplane.domain.plans.overrides import PlanOverride
from quotaplane.domain.tenants.model import Tenant, TenantStatus
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_override_text, parse_plans

NOV = Period(2026, 11)
MID = datetime(2026, 11, 16, tzinfo=UTC)
PLANS = """\
plans:
  pro:
    base_fee: "49.00"
    metrics:
      requests:
        charge: {model: per_unit, unit_price: "0.001"}
        limits: {month: 1000000}
"""
DEAL = PlanOverride.of(parse_override_text("{base_fee: '99.00'}"))


def _tenant(override: PlanOverride | None) -> Tenant:
    start = datetime(2026, 10, 1, tzinfo=UTC)
    return Tenant(
        id="00000000-0000-4000-8000-000000000001",
        name="Acme",
        plan="pro",
        status=TenantStatus.ACTIVE,
        created_at=start,
        updated_at=start,
        overrides=override,
    )


def test_an_override_set_mid_period_applies_from_then_on() -> None:
    catalog = parse_plans(PLANS, "plans.yaml")
    changes = [PlanChange("pro", datetime(2026, 10, 1, tzinfo=UTC)), PlanChange("pro", MID, DEAL)]
    tenant = _tenant(DEAL)
    assert [(s[0], s[3]) for s in terms_spans(NOV, changes, tenant)] == [
        (NOV.start, None),
        (MID, DEAL),
    ]
    usage = [
        HourlyUsage("requests", datetime(2026, 11, 2, tzinfo=UTC), 1000),
        HourlyUsage("requests", datetime(2026, 11, 20, tzinfo=UTC), 2000),
    ]
    priced = price_tenant_period(tenant, NOV, catalog, usage, changes)
    fees = [(line.amount, line.override) for line in priced.lines if line.metric == BASE_FEE]
    assert fees == [(Decimal("24.50"), ""), (Decimal("49.50"), "base_fee")]
    requests = [(line.amount, line.override) for line in priced.lines if line.metric != BASE_FEE]
    assert requests == [(Decimal("1.00"), ""), (Decimal("2.00"), "")]  # unit price unchanged
    assert priced.total == Decimal("77.00")


def test_clearing_an_override_mid_period_ends_it_there() -> None:
    catalog = parse_plans(PLANS, "plans.yaml")
    changes = [PlanChange("pro", datetime(2026, 10, 1, tzinfo=UTC), DEAL), PlanChange("pro", MID)]
    priced = price_tenant_period(_tenant(None), NOV, catalog, [], changes)
    fees = [(line.amount, line.override) for line in priced.lines if line.metric == BASE_FEE]
    assert fees == [(Decimal("49.50"), "base_fee"), (Decimal("24.50"), "")]


def test_the_same_override_recorded_twice_is_one_span() -> None:
    again = PlanOverride.of(parse_override_text('{"base_fee": "99.00"}'))
    changes = [PlanChange("pro", NOV.start, DEAL), PlanChange("pro", MID, again)]
    assert len(terms_spans(NOV, changes, _tenant(again))) == 1
