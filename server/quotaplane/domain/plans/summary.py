"""Plans in words, for operators: one line per plan, a price per metric."""

from __future__ import annotations

from quotaplane.domain.money import format_money
from quotaplane.domain.plans.model import (
    Charge,
    MetricPlan,
    Package,
    PerUnit,
    Plan,
    PlanCatalog,
    Tier,
)


def price_summary(charge: Charge | None, currency: str) -> str:
    """A metric's price for operators, e.g. ``0.04 USD per started 1,000``."""
    if charge is None:
        return "free"
    if isinstance(charge, PerUnit):
        return f"{format_money(charge.unit_price, currency)} per unit"
    if isinstance(charge, Package):
        return f"{format_money(charge.package_price, currency)} per started {charge.package_size:,}"
    tiers = "; ".join(_tier_summary(tier, currency) for tier in charge.tiers)
    return f"{charge.model} tiers: {tiers}"


def metric_price(metric: MetricPlan, currency: str) -> str:
    """A metric's price for operators, or where it is priced (a Stripe meter)."""
    if metric.stripe_meter:
        return f"priced in Stripe (meter {metric.stripe_meter})"
    return price_summary(metric.charge, currency)


def _tier_summary(tier: Tier, currency: str) -> str:
    bound = "the rest" if tier.up_to is None else f"up to {tier.up_to:,}"
    fee = f" + {format_money(tier.flat_fee, currency)} flat" if tier.flat_fee else ""
    return f"{bound} at {format_money(tier.unit_price, currency)} each{fee}"


def summarize(catalog: PlanCatalog) -> list[str]:
    """One human line per plan, in name order (``quotaplane plans validate``)."""
    return [_summarize_plan(catalog.plans[name]) for name in catalog.names()]


def _summarize_plan(plan: Plan) -> str:
    fee = "no base fee"
    if plan.base_fee:
        fee = f"base fee {format_money(plan.base_fee, plan.currency)}/month"
    if plan.spend_cap is not None:
        fee += f", spend cap {format_money(plan.spend_cap, plan.currency)}/month"
    metrics = [_summarize_metric(m, plan.currency) for _, m in sorted(plan.metrics.items())]
    return f"{plan.name} ({plan.currency}, {fee}): " + "; ".join(metrics)


def _summarize_metric(metric: MetricPlan, currency: str) -> str:
    parts = [f"{metric.included:,} included"] if metric.included else []
    parts.append(metric_price(metric, currency))
    parts.extend(
        f"limit {limit.limit:,}/{limit.window.value} "
        f"({'shadow' if limit.shadow else limit.overage.value})"
        for limit in metric.limits
    )
    return f"{metric.metric}: " + ", ".join(parts)
