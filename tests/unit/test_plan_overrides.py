"""Plans documents and tenant overrides: the digest, the merge, the effective plan."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quotaplane.domain.errors import FailedPrecondition, NotFound, PlanFileError
from quotaplane.domain.plans.documents import changed_paths, digest, merge_patch
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.overrides import (
    PlanOverride,
    build_effective,
    effective_plan,
    overridden_lines,
)
from quotaplane.domain.windows import Window
from quotaplane.integrations.plans_file import parse_override_text, parse_plans

SEED = "plans:\n  growth: {price_per_1000_requests: 0.04, monthly_quota: 50000}\n"
FULL = """\
plans:
  pro:
    base_fee: "49.00"
    metrics:
      requests:
        included: 1000
        charge: {model: per_unit, unit_price: "0.001"}
        limits: {second: 10, month: {limit: 100000, overage: bill}}
"""


def _override(text: str) -> PlanOverride:
    override = PlanOverride.of(parse_override_text(text))
    assert override is not None
    return override


def test_the_digest_ignores_formatting_comments_and_key_order() -> None:
    same = (
        "# comment\nplans:\n  growth:\n"
        "    monthly_quota: 50000\n    price_per_1000_requests: 0.04\n"
    )
    assert parse_plans(SEED, "a").digest == parse_plans(same, "b").digest
    assert parse_plans(SEED, "a").digest != parse_plans(SEED.replace("0.04", "0.05"), "a").digest
    assert digest({"a": "1"}) != digest({"a": "01"})  # numbers stay as written


def test_merge_patch_merges_mappings_replaces_the_rest_and_null_removes() -> None:
    base = {"a": {"b": "1", "c": "2"}, "tiers": ["x"], "gone": "1"}
    patch = {"a": {"b": "9"}, "tiers": ["y", "z"], "gone": None}
    assert merge_patch(base, patch) == {"a": {"b": "9", "c": "2"}, "tiers": ["y", "z"]}
    assert base["a"] == {"b": "1", "c": "2"}  # the base is not changed
    charge = {"model": "package", "package_size": "1000", "package_price": "0.04"}
    assert merge_patch(
        {"charge": charge}, {"charge": {"model": "per_unit", "unit_price": "1"}}
    ) == {"charge": {"model": "per_unit", "unit_price": "1"}}


def test_an_override_of_a_seed_plan_in_its_own_shorthand() -> None:
    catalog = parse_plans(SEED, "plans.yaml")
    plan = build_effective(catalog, "growth", _override("{monthly_quota: 7}"))
    (limit,) = plan.limits_for("requests")
    assert (limit.window, limit.limit) == (Window.MONTH, 7)
    assert plan.metrics["requests"].charge == catalog.get("growth").metrics["requests"].charge


def test_an_override_reaching_into_metrics_of_a_seed_plan_uses_its_full_form() -> None:
    catalog = parse_plans(SEED, "plans.yaml")
    override = _override("metrics: {requests: {limits: {second: 5}}}")
    plan = build_effective(catalog, "growth", override)
    assert [(lim.window, lim.limit) for lim in plan.limits_for("requests")] == [
        (Window.SECOND, 5),
        (Window.MONTH, 50000),
    ]
    assert plan.name == "growth"


def test_an_override_of_a_full_plan_changes_only_what_it_names() -> None:
    catalog = parse_plans(FULL, "plans.yaml")
    override = _override("base_fee: '99.00'\nmetrics: {requests: {limits: {second: null}}}")
    plan = build_effective(catalog, "pro", override)
    assert plan.base_fee == Decimal("99.00")
    assert [lim.window for lim in plan.limits_for("requests")] == [Window.MONTH]
    assert plan.metrics["requests"].included == 1000
    changed = overridden_lines(catalog.get("pro"), plan)
    assert changed == {"base_fee": True, "requests": True}
    assert override.paths() == ["base_fee", "metrics.requests.limits.second"]


def test_an_override_is_checked_by_the_plan_rules_naming_each_problem() -> None:
    catalog = parse_plans(FULL, "plans.yaml")
    bad = _override("metrics: {requests: {limits: {minute: -1}}, rating: {nope: 1}}")
    with pytest.raises(PlanFileError) as refused:
        build_effective(catalog, "pro", bad)
    assert "metrics.requests.limits.minute: must not be negative" in refused.value.message
    assert "metrics.rating.nope: unknown key" in refused.value.message


def test_the_effective_plan_is_memoized_per_catalog_and_unknown_plans_are_not_found() -> None:
    catalog = parse_plans(FULL, "plans.yaml")
    override = _override("{base_fee: '1.00'}")
    first = effective_plan(catalog, "pro", override)
    assert effective_plan(catalog, "pro", _override("{base_fee: '1.00'}")) is first
    assert effective_plan(catalog, "pro", None) is catalog.get("pro")
    with pytest.raises(NotFound):
        effective_plan(catalog, "nosuch", override)


def test_an_override_that_no_longer_fits_its_plan_is_a_failed_precondition() -> None:
    catalog = parse_plans(FULL.replace('base_fee: "49.00"', "currency: JPY"), "plans.yaml")
    with pytest.raises(FailedPrecondition, match="do not fit plan 'pro'"):
        effective_plan(catalog, "pro", _override("{base_fee: '1.50'}"))  # JPY has no cents


def test_changed_paths_lists_leaves() -> None:
    assert changed_paths({"a": {"b": "1"}}, {"a": {"b": "2", "c": "3"}}) == ["a.b", "a.c"]
    assert isinstance(parse_plans(SEED, "x"), PlanCatalog)
