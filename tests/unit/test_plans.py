"""The plans loader: the seed loads unchanged, the full format, and strict validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from quotaplane.domain.errors import NotFound, PlanFileError
from quotaplane.domain.plans.model import (
    Graduated,
    Limit,
    MetricPlan,
    Overage,
    Package,
    PerUnit,
    Plan,
    PlanCatalog,
    Tier,
    Volume,
)
from quotaplane.domain.plans.summary import summarize
from quotaplane.domain.windows import Window
from quotaplane.integrations.plans_file import load_default_plans, load_plans, parse_plans

FIXTURES = Path(__file__).parent / "plans"
SEED_TEXT = (FIXTURES / "seed.yaml").read_text()


def problems_of(text: str) -> list[str]:
    with pytest.raises(PlanFileError) as caught:
        parse_plans(text, "plans.yaml")
    return caught.value.problems


def one_plan(body: str) -> str:
    """A plans file with one full-format plan named p whose plan body is ``body``."""
    return "plans:\n  p:\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def test_seed_loads_with_its_three_plans() -> None:
    assert parse_plans(SEED_TEXT, "seed.yaml").names() == ("enterprise", "growth", "starter")


def test_seed_shorthand_means_packages_of_1000_and_a_blocking_monthly_quota() -> None:
    growth = parse_plans(SEED_TEXT, "seed.yaml").get("growth")
    assert growth == Plan(
        name="growth",
        currency="USD",
        base_fee=Decimal(0),
        metrics={
            "requests": MetricPlan(
                metric="requests",
                charge=Package(package_size=1000, package_price=Decimal("0.04")),
                limits=(Limit("requests", Window.MONTH, 50000, Overage.BLOCK),),
            )
        },
    )


def test_seed_prices_are_exact_decimals_not_floats() -> None:
    starter = parse_plans(SEED_TEXT, "seed.yaml").get("starter")
    charge = starter.metrics["requests"].charge
    assert isinstance(charge, Package) and str(charge.package_price) == "0.05"


def test_default_plans_file_is_the_seed() -> None:
    assert load_default_plans().plans == parse_plans(SEED_TEXT, "seed.yaml").plans


def test_load_plans_reads_a_file_and_keeps_its_path_as_source() -> None:
    assert load_plans(FIXTURES / "seed.yaml").source == str(FIXTURES / "seed.yaml")


def test_full_format_graduated_metric() -> None:
    requests = load_plans(FIXTURES / "full.yaml").get("pro").metrics["requests"]
    assert (requests.included, requests.charge) == (
        10000,
        Graduated(
            tiers=(
                Tier(up_to=100000, unit_price=Decimal("0.0005")),
                Tier(up_to=None, unit_price=Decimal("0.0003"), flat_fee=Decimal("1.00")),
            )
        ),
    )


def test_full_format_limits_are_sorted_by_window_and_short_form_blocks() -> None:
    pro = load_plans(FIXTURES / "full.yaml").get("pro")
    assert pro.limits_for("requests") == (
        Limit("requests", Window.SECOND, 50, Overage.BLOCK),
        Limit("requests", Window.MINUTE, 1000, Overage.BLOCK),
        Limit("requests", Window.MONTH, 1000000, Overage.BILL),
    )


def test_full_format_plan_currency_overrides_the_default() -> None:
    catalog = load_plans(FIXTURES / "full.yaml")
    assert (catalog.get("pro").currency, catalog.get("volume-plan").currency) == ("EUR", "USD")


def test_full_format_volume_package_and_per_unit_models() -> None:
    catalog = load_plans(FIXTURES / "full.yaml")
    volume = catalog.get("volume-plan").metrics
    assert isinstance(volume["requests"].charge, Volume)
    assert volume["requests"].charge.tiers[1].flat_fee == Decimal("2.50")
    assert volume["exports"].charge == Package(500, Decimal("1.25"))
    assert catalog.get("tokyo").metrics["requests"].charge == PerUnit(Decimal("0.5"))


def test_metric_with_limits_and_no_charge_is_free() -> None:
    free = load_plans(FIXTURES / "full.yaml").get("free")
    assert free.metrics["requests"].charge is None and free.has_metric("requests")


def test_limits_for_an_unknown_metric_is_empty() -> None:
    growth = load_default_plans().get("growth")
    assert (growth.limits_for("rating.bulk"), growth.has_metric("rating.bulk")) == ((), False)


def test_unknown_plan_names_the_plan_and_the_known_ones() -> None:
    with pytest.raises(NotFound, match=r"unknown plan 'gold'; known plans: enterprise, growth"):
        load_default_plans().get("gold")


def test_plans_are_read_only() -> None:
    growth = load_default_plans().get("growth")
    with pytest.raises(TypeError):
        growth.metrics["x"] = growth.metrics["requests"]  # type: ignore[index]


def test_catalog_contains() -> None:
    assert "growth" in load_default_plans() and "gold" not in load_default_plans()


def test_summarize_gives_one_line_per_plan_in_name_order() -> None:
    assert summarize(load_default_plans()) == [
        "enterprise (USD, no base fee): requests: 0.03 USD per started 1,000, "
        "limit 200,000/month (block)",
        "growth (USD, no base fee): requests: 0.04 USD per started 1,000, "
        "limit 50,000/month (block)",
        "starter (USD, no base fee): requests: 0.05 USD per started 1,000, "
        "limit 10,000/month (block)",
    ]


def test_summarize_shows_base_fee_included_units_and_tiers() -> None:
    line = summarize(PlanCatalog({"pro": load_plans(FIXTURES / "full.yaml").get("pro")}, "x"))[0]
    assert line.startswith("pro (EUR, base fee 49.00 EUR/month): rating.bulk: 0.002 EUR per unit")
    assert "10,000 included, graduated tiers: up to 100,000 at 0.0005 EUR each" in line


# --- strict validation: every problem, as file:path: message ---


def test_every_problem_of_a_file_is_reported_with_file_and_path() -> None:
    with pytest.raises(PlanFileError) as caught:
        load_plans(FIXTURES / "many_problems.yaml")
    where = [line.split(": ", 1)[0] for line in caught.value.problems]
    assert where == [
        f"{FIXTURES / 'many_problems.yaml'}:{path}"
        for path in [
            "version",
            "currency",
            "plans.growth.price_per_1000_requests",
            "plans.float-trap.price_per_1000_requests",
            "plans.no-quota.monthly_quota",
            "plans.Upper",
            "plans.tiered.metrics.requests.included",
            "plans.tiered.metrics.requests.charge.tiers[0].unit_price",
            "plans.tiered.metrics.requests.charge.tiers[2].discount",
            "plans.tiered.metrics.requests.charge.tiers[1].up_to",
            "plans.tiered.metrics.requests.charge.tiers[2].up_to",
            "plans.tiered.metrics.requests.limits.week",
            "plans.tiered.metrics.requests.limits.second.overage",
            "plans.tiered.metrics.exports.charge.package_size",
            "plans.tiered.metrics.exports.charge.package_price",
        ]
    ]


def test_negative_price_message_is_exact() -> None:
    text = "plans:\n  growth: {price_per_1000_requests: -0.04, monthly_quota: 50000}\n"
    assert problems_of(text) == [
        "plans.yaml:plans.growth.price_per_1000_requests: must not be negative"
    ]


def test_float_trap_price_is_refused_not_rounded() -> None:
    text = "plans:\n  growth: {price_per_1000_requests: 0.050000000000000003, monthly_quota: 1}\n"
    assert problems_of(text) == [
        "plans.yaml:plans.growth.price_per_1000_requests: "
        "0.050000000000000003 has 18 decimal places; at most 2 allowed"
    ]


def test_duplicate_plan_is_an_error_naming_it() -> None:
    with pytest.raises(PlanFileError) as caught:
        load_plans(FIXTURES / "duplicate_plan.yaml")
    assert caught.value.problems == [
        f"{FIXTURES / 'duplicate_plan.yaml'}:plans.growth: "
        "duplicate key (YAML would silently keep only the last one)"
    ]


def test_duplicate_nested_key_is_an_error() -> None:
    text = one_plan("metrics:\n  requests:\n    limits: {day: 5, day: 6}")
    assert problems_of(text) == [
        "plans.yaml:plans.p.metrics.requests.limits.day: "
        "duplicate key (YAML would silently keep only the last one)"
    ]


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(PlanFileError, match=r"broken_syntax.yaml:line 3, column 1: invalid YAML"):
        load_plans(FIXTURES / "broken_syntax.yaml")


def test_missing_file_is_a_plan_file_error() -> None:
    with pytest.raises(PlanFileError, match="cannot read plans file"):
        load_plans(FIXTURES / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "plans.yaml:(top level): the file is empty; it must define plans"),
        ("- 1\n", "plans.yaml:(top level): must be a mapping, got a list"),
        ("currency: USD\n", "plans.yaml:plans: is required"),
        ("plans: {}\n", "plans.yaml:plans: must be a mapping with at least one plan"),
        (
            "plans: {a: {price_per_1000_requests: 1}}\n",
            "plans.yaml:plans.a.monthly_quota: is required",
        ),
        (
            "plans: {a: {price_per_1000_requests: 1, monthly_quota: 1, price: 2}}\n",
            "plans.yaml:plans.a.price: unknown key; "
            "allowed: base_fee, currency, monthly_quota, price_per_1000_requests",
        ),
        (
            "plans: {a: {price_per_1000_requests: 1, monthly_quota: 1.5}}\n",
            "plans.yaml:plans.a.monthly_quota: must be a whole number, got '1.5'",
        ),
        (
            "plans: {a: {price_per_1000_requests: 1, monthly_quota: 1, currency: XYZ}}\n",
            "plans.yaml:plans.a.currency: unknown currency 'XYZ'; known (ISO 4217, upper case): ",
        ),
        (
            "plans: {a: {price_per_1000_requests: 1e3, monthly_quota: 1}}\n",
            "plans.yaml:plans.a.price_per_1000_requests: '1e3' is not a plain decimal number",
        ),
        (
            "plans: {a: {price_per_1000_requests: .inf, monthly_quota: 1}}\n",
            "plans.yaml:plans.a.price_per_1000_requests: '.inf' is not a plain decimal number",
        ),
        (
            "plans: {a: {price_per_1000_requests: yes, monthly_quota: 1}}\n",
            "plans.yaml:plans.a.price_per_1000_requests: 'yes' is not a plain decimal number",
        ),
        (
            "plans: {a: {price_per_1000_requests: 1, monthly_quota: 1:30}}\n",
            "plans.yaml:plans.a.monthly_quota: must be a whole number, got '1:30'",
        ),
        (
            "plans: {a: {price_per_1000_requests: 1, monthly_quota: 1, metrics: {}}}\n",
            "plans.yaml:plans.a.metrics: unknown key",
        ),
        ("plans: {a: {currency: USD}}\n", "plans.yaml:plans.a.metrics: is required"),
        (
            "plans: {a: {metrics: {Requests: {limits: {day: 1}}}}}\n",
            "plans.yaml:plans.a.metrics.Requests: metric names are",
        ),
        (
            "plans: {a: {metrics: {r: {}}}}\n",
            "plans.yaml:plans.a.metrics.r: must set charge, limits",
        ),
        (
            "plans: {a: {metrics: {r: {limits: {month: {limit: 5, overage: bill}}}}}}\n",
            "plans.yaml:plans.a.metrics.r.limits: overage 'bill' needs a charge for this metric",
        ),
        (
            "plans: {a: {metrics: {r: {limits: {day: {limit: 5, overage: warn}}}}}}\n",
            "plans.yaml:plans.a.metrics.r.limits.day.overage: "
            "must be one of bill, block, got 'warn'",
        ),
        (
            "plans: {a: {metrics: {r: {limits: {day: {overage: block}}}}}}\n",
            "plans.yaml:plans.a.metrics.r.limits.day.limit: is required",
        ),
        (
            "plans: {a: {metrics: {r: {limits: {day: -5}}}}}\n",
            "plans.yaml:plans.a.metrics.r.limits.day: must not be negative",
        ),
        (
            "plans: {a: {base_fee: '9.999', metrics: {r: {limits: {day: 1}}}}}\n",
            "plans.yaml:plans.a.base_fee: 9.999 has 3 decimal places; at most 2 allowed",
        ),
        (
            "plans: {a: {currency: JPY, base_fee: '5000.5', metrics: {r: {limits: {day: 1}}}}}\n",
            "plans.yaml:plans.a.base_fee: 5000.5 has 1 decimal places; at most 0 allowed",
        ),
    ],
)
def test_invalid_files_are_refused_with_a_clear_problem(text: str, problem: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize(
    ("charge", "problem"),
    [
        (
            "{unit_price: 1}",
            "charge.model: is required: one of graduated, package, per_unit, volume",
        ),
        ("{model: flat}", "charge.model: must be one of graduated, package, per_unit, volume"),
        ("{model: per_unit}", "charge.unit_price: is required"),
        ("{model: per_unit, unit_price: '0.0000001'}", "charge.unit_price: 0.0000001 has 7"),
        (
            "{model: per_unit, unit_price: 1, tiers: []}",
            "charge.tiers: unknown key; allowed: model,",
        ),
        (
            "{model: package, package_size: 0, package_price: 1}",
            "charge.package_size: must be at least 1, got 0",
        ),
        (
            "{model: package, package_size: -5, package_price: 1}",
            "charge.package_size: must not be",
        ),
        ("{model: graduated, tiers: []}", "charge.tiers: must be a list with at least one tier"),
        (
            "{model: volume, tiers: [{up_to: 10, unit_price: 1}]}",
            "charge.tiers[0].up_to: the last tier must have up_to: null",
        ),
        (
            "{model: volume, tiers: [{up_to: null, unit_price: 1}, {up_to: null, unit_price: 1}]}",
            "charge.tiers[0].up_to: only the last tier may have up_to: null",
        ),
        (
            "{model: graduated, tiers: [{up_to: 10, unit_price: 1}, {up_to: 10, unit_price: 1}, "
            "{up_to: null, unit_price: 1}]}",
            "charge.tiers[1].up_to: must be strictly increasing",
        ),
        (
            "{model: graduated, tiers: [{up_to: 0, unit_price: 1}, {up_to: null, unit_price: 1}]}",
            "charge.tiers[0].up_to: must be at least 1, got 0",
        ),
        ("{model: graduated, tiers: [{unit_price: 1}]}", "charge.tiers[0].up_to: is required"),
        (
            "{model: graduated, tiers: [{up_to: null, unit_price: 1, flat_fee: '0.001'}]}",
            "charge.tiers[0].flat_fee: 0.001 has 3 decimal places; at most 2 allowed",
        ),
    ],
)
def test_invalid_charges_are_refused(charge: str, problem: str) -> None:
    problems = problems_of(one_plan(f"metrics:\n  r:\n    charge: {charge}"))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"plans.yaml:plans.p.metrics.r.{problem}"), problems


def test_numbers_may_be_quoted_or_plain_with_the_same_meaning() -> None:
    plain = parse_plans("plans: {a: {price_per_1000_requests: 0.10, monthly_quota: 1_000}}", "x")
    quoted = parse_plans(
        "plans: {a: {price_per_1000_requests: '0.10', monthly_quota: '1000'}}", "x"
    )
    assert plain.plans == quoted.plans


def test_a_leading_zero_is_decimal_not_octal() -> None:
    catalog = parse_plans("plans: {a: {price_per_1000_requests: 1, monthly_quota: 010}}", "x")
    assert catalog.get("a").limits_for("requests")[0].limit == 10


def test_file_level_currency_applies_to_shorthand_plans() -> None:
    text = "currency: KWD\nplans: {a: {price_per_1000_requests: '0.125', monthly_quota: 1}}"
    assert parse_plans(text, "x").get("a").currency == "KWD"


def test_alias_bombs_are_refused() -> None:
    # Nine levels of ten aliases each: a billion values from a few hundred bytes.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    problems = problems_of("\n".join(lines) + "\nplans: {}\n")
    assert any("expands to more than" in problem for problem in problems)


def test_an_unknown_plan_currency_is_the_only_problem_reported() -> None:
    text = one_plan('currency: XYZ\nbase_fee: "49.00"\nmetrics: {r: {limits: {day: 1}}}')
    assert len(problems_of(text)) == 1


def test_a_limit_may_be_a_shadow_limit_and_a_plan_may_cap_its_spend() -> None:
    text = one_plan("""
spend_cap: "12.34"
metrics:
  requests:
    charge: {model: per_unit, unit_price: "0.001"}
    limits: {second: {limit: 10, mode: shadow}, month: {limit: 5, mode: enforce}}
""")
    plan = parse_plans(text, "plans.yaml").get("p")
    second, month = plan.limits_for("requests")
    assert (second.shadow, month.shadow) == (True, False)
    assert plan.spend_cap == Decimal("12.34")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('spend_cap: "1.234"', "plans.p.spend_cap: 1.234 has 3 decimal places; at most 2 allowed"),
        ('spend_cap: "1000000001"', "plans.p.spend_cap: must be at most 1,000,000,000"),
        ("spend_cap: 1.5e3", "plans.p.spend_cap"),
        ("mode: loud", "limits.month.mode: must be one of enforce, shadow"),
        ("mode: shadow\n        overage: bill", "a shadow limit never refuses"),
    ],
)
def test_bad_modes_and_caps_are_named(body: str, problem: str) -> None:
    cap, _, limit = body.partition("mode:")
    limit_keys = f"mode:{limit}" if limit else ""
    text = one_plan(f"""
{cap}
metrics:
  requests:
    charge: {{model: per_unit, unit_price: "0.001"}}
    limits:
      month:
        limit: 5
        {limit_keys}
""")
    assert any(problem in line for line in problems_of(text)), problems_of(text)


PRICED_IN_STRIPE = (
    "plans: {a: {metrics: {r: {stripe_meter: openclaw_requests, limits: {day: 1}}}}}\n"
)


def test_a_metric_may_be_priced_by_a_stripe_meter() -> None:
    catalog = parse_plans(
        "plans:\n  m:\n    base_fee: '10.00'\n    metrics:\n"
        "      requests: {stripe_meter: openclaw_requests,\n"
        "                 limits: {month: {limit: 9, overage: bill}}}\n"
        "      rating.bulk: {charge: {model: per_unit, unit_price: '0.01'}}\n",
        "plans.yaml",
    )
    plan = catalog.get("m")
    assert plan.metrics["requests"].stripe_meter == "openclaw_requests"
    assert plan.metrics["requests"].charge is None
    assert plan.limits_for("requests")[0].overage is Overage.BILL
    assert plan.stripe_meters() == {"requests": "openclaw_requests"}
    assert parse_plans(SEED_TEXT, "seed.yaml").get("growth").stripe_meters() == {}
    (line,) = summarize(catalog)
    assert "requests: priced in Stripe (meter openclaw_requests)" in line


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            PRICED_IN_STRIPE.replace(
                "limits", "charge: {model: per_unit, unit_price: '1'}, limits"
            ),
            "plans.yaml:plans.a.metrics.r.stripe_meter: a metric priced in Stripe cannot set "
            "'charge'",
        ),
        (
            PRICED_IN_STRIPE.replace("limits", "included: 5, limits"),
            "plans.yaml:plans.a.metrics.r.stripe_meter: a metric priced in Stripe cannot set "
            "'included'",
        ),
        (
            PRICED_IN_STRIPE.replace("openclaw_requests", "'bad name'"),
            "plans.yaml:plans.a.metrics.r.stripe_meter: a Stripe meter event_name",
        ),
        (
            PRICED_IN_STRIPE.replace("openclaw_requests", "''"),
            "plans.yaml:plans.a.metrics.r.stripe_meter: a Stripe meter event_name",
        ),
        (
            PRICED_IN_STRIPE.replace("1}}", "1}}, s: {stripe_meter: openclaw_requests}"),
            "plans.yaml:plans.a.metrics.s.stripe_meter: meter 'openclaw_requests' is already",
        ),
    ],
)
def test_stripe_meters_are_validated(text: str, problem: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].startswith(problem), problems
