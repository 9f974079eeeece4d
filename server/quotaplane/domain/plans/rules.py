"""The validation rules that turn a plans tree into a PlanCatalog, collecting every problem.

Each reader takes the raw value and its key path, reports what is wrong to ``Problems``
and returns the built value or None; a plan is built only when all of its parts are.
The file format is documented in ``model.py``; ``integrations/plans_file.py`` reads a file
into the tree.
"""

from __future__ import annotations

import itertools
import re
from decimal import Decimal

from quotaplane.domain.errors import PlanFileError
from quotaplane.domain.money import CURRENCY_MINOR_UNITS
from quotaplane.domain.plans.documents import digest
from quotaplane.domain.plans.model import (
    DEFAULT_CURRENCY,
    MAX_SPEND_CAP,
    SEED_METRIC,
    SEED_PACKAGE_SIZE,
    UNIT_PRICE_PLACES,
    Charge,
    Graduated,
    Limit,
    LimitMode,
    MetricPlan,
    Overage,
    Package,
    PerUnit,
    Plan,
    PlanCatalog,
    Tier,
    Volume,
)
from quotaplane.domain.plans.problems import KeyPath, Problems, Tree
from quotaplane.domain.windows import Window

PLAN_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
METRIC_NAME_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# Stripe's meter event_name: at most 100 characters; quotaplane keeps to a safe alphabet.
METER_EVENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_DIGITS_RE = re.compile(r"[0-9]+")

_TOP_KEYS = ("currency", "plans")
_SEED_KEYS = ("price_per_1000_requests", "monthly_quota")
_PLAN_KEYS = ("currency", "base_fee", "spend_cap", "metrics")
_METRIC_KEYS = ("included", "charge", "limits", "stripe_meter")
_LIMIT_KEYS = ("limit", "overage", "mode")
_TIER_KEYS = ("up_to", "unit_price", "flat_fee")
_CHARGE_KEYS = {
    PerUnit.model: ("unit_price",),
    Package.model: ("package_size", "package_price"),
    Graduated.model: ("tiers",),
    Volume.model: ("tiers",),
}
_WINDOW_NAMES = frozenset(window.value for window in Window)
_WINDOW_ORDER = {window: index for index, window in enumerate(Window)}


def build_catalog(tree: Tree, problems: Problems) -> PlanCatalog:
    """The catalog a plans tree describes; PlanFileError lists every problem found (with those
    ``problems`` already holds from reading the tree)."""
    source = problems.source
    catalog = _catalog(tree, source, problems)
    if problems.lines or catalog is None:
        raise PlanFileError(problems.lines or [f"{source}:(file): invalid plans file"])
    return catalog


def _catalog(tree: Tree, source: str, problems: Problems) -> PlanCatalog | None:
    if tree is None:
        problems.add((), "the file is empty; it must define plans")
        return None
    top = problems.mapping(tree, (), _TOP_KEYS, required=("plans",))
    if top is None:
        return None
    currency = DEFAULT_CURRENCY
    if "currency" in top:
        currency = _currency(top["currency"], ("currency",), problems) or DEFAULT_CURRENCY
    if "plans" not in top:
        return None  # reported as required
    raw_plans = top["plans"]
    if not isinstance(raw_plans, dict) or not raw_plans:
        problems.add(("plans",), "must be a mapping with at least one plan")
        return None
    plans = {name: _plan(name, raw, currency, problems) for name, raw in raw_plans.items()}
    built = {name: plan for name, plan in plans.items() if plan is not None}
    return PlanCatalog(
        plans=built,
        source=source,
        digest=digest(tree),
        entries=raw_plans,
        default_currency=currency,
    )


def build_plan(name: str, entry: Tree, default_currency: str, source: str) -> Plan:
    """One plan entry built by the same rules as a plan of a file (a plan with a tenant's
    overrides merged in); PlanFileError lists every problem."""
    problems = Problems(source)
    plan = _plan(name, entry, default_currency, problems)
    if problems.lines or plan is None:
        raise PlanFileError(problems.lines or [f"{source}: invalid plan"])
    return plan


def _currency(value: Tree, path: KeyPath, problems: Problems) -> str | None:
    if isinstance(value, str) and value in CURRENCY_MINOR_UNITS:
        return value
    known = ", ".join(sorted(CURRENCY_MINOR_UNITS))
    problems.add(path, f"unknown currency {value!r}; known (ISO 4217, upper case): {known}")
    return None


def _plan(name: str, value: Tree, default_currency: str, problems: Problems) -> Plan | None:
    path: KeyPath = ("plans", name)
    if not PLAN_NAME_RE.fullmatch(name):
        problems.add(path, "plan names are 1-64 of a-z, 0-9, '_', '-', starting alphanumeric")
    is_seed = isinstance(value, dict) and any(key in value for key in _SEED_KEYS)
    allowed = (*_SEED_KEYS, "currency", "base_fee", "spend_cap") if is_seed else _PLAN_KEYS
    raw = problems.mapping(value, path, allowed, required=_SEED_KEYS if is_seed else ("metrics",))
    if raw is None:
        return None
    currency = default_currency
    if "currency" in raw:
        currency = _currency(raw["currency"], (*path, "currency"), problems) or ""
    # With an unknown currency, check amounts leniently rather than report them too.
    places = CURRENCY_MINOR_UNITS.get(currency, UNIT_PRICE_PLACES)
    base_fee: Decimal | None = Decimal(0)
    if "base_fee" in raw:
        base_fee = problems.money(raw["base_fee"], (*path, "base_fee"), max_places=places)
    cap_ok, spend_cap = _spend_cap(raw, path, places, problems)
    metrics = _seed_metrics(raw, path, places, problems) if is_seed else None
    if not is_seed and "metrics" in raw:
        metrics = _metrics(raw["metrics"], (*path, "metrics"), places, problems)
    if not currency or base_fee is None or metrics is None or not PLAN_NAME_RE.fullmatch(name):
        return None
    if not cap_ok:
        return None
    return Plan(
        name=name, currency=currency, base_fee=base_fee, metrics=metrics, spend_cap=spend_cap
    )


def _spend_cap(
    raw: dict[str, Tree], path: KeyPath, places: int, problems: Problems
) -> tuple[bool, Decimal | None]:
    """(valid, the plan's spend cap or None when it sets none); problems are reported."""
    if "spend_cap" not in raw:
        return True, None
    cap_path = (*path, "spend_cap")
    cap = problems.money(raw["spend_cap"], cap_path, max_places=places)
    if cap is not None and cap > MAX_SPEND_CAP:
        problems.add(cap_path, f"must be at most {MAX_SPEND_CAP:,}")
        return False, None
    return cap is not None, cap


def _seed_metrics(
    raw: dict[str, Tree], path: KeyPath, places: int, problems: Problems
) -> dict[str, MetricPlan] | None:
    """The seed shorthand: packages of 1,000 requests, a monthly quota that blocks."""
    price = quota = None
    if "price_per_1000_requests" in raw:
        price_path = (*path, "price_per_1000_requests")
        price = problems.money(raw["price_per_1000_requests"], price_path, max_places=places)
    if "monthly_quota" in raw:
        quota = problems.integer(raw["monthly_quota"], (*path, "monthly_quota"))
    if price is None or quota is None:
        return None
    limit = Limit(metric=SEED_METRIC, window=Window.MONTH, limit=quota, overage=Overage.BLOCK)
    charge = Package(package_size=SEED_PACKAGE_SIZE, package_price=price)
    return {SEED_METRIC: MetricPlan(metric=SEED_METRIC, charge=charge, limits=(limit,))}


def _metrics(
    value: Tree, path: KeyPath, places: int, problems: Problems
) -> dict[str, MetricPlan] | None:
    if not isinstance(value, dict) or not value:
        problems.add(path, "must be a mapping with at least one metric")
        return None
    metrics = {
        name: _metric(name, raw, (*path, name), places, problems) for name, raw in value.items()
    }
    built = {name: metric for name, metric in metrics.items() if metric is not None}
    if not _meters_unshared(built, path, problems):
        return None
    return built if len(built) == len(metrics) else None


def _meters_unshared(metrics: dict[str, MetricPlan], path: KeyPath, problems: Problems) -> bool:
    seen: dict[str, str] = {}
    for name, metric in metrics.items():
        if metric.stripe_meter is None:
            continue
        if metric.stripe_meter in seen:
            problems.add(
                (*path, name, "stripe_meter"),
                f"meter {metric.stripe_meter!r} is already the meter of "
                f"{seen[metric.stripe_meter]!r}",
            )
            return False
        seen[metric.stripe_meter] = name
    return True


def _stripe_meter(raw: dict[str, Tree], path: KeyPath, problems: Problems) -> str | None:
    """The meter's event name; reports a bad one or one set with quotaplane's prices."""
    value = raw["stripe_meter"]
    meter_path = (*path, "stripe_meter")
    if not isinstance(value, str) or not METER_EVENT_RE.fullmatch(value):
        problems.add(meter_path, "a Stripe meter event_name: 1-100 of A-Z, a-z, 0-9, '_.:-'")
        return None
    for key in ("charge", "included"):
        if key in raw:
            problems.add(meter_path, f"a metric priced in Stripe cannot set {key!r} too")
            return None
    return value


def _metric(
    name: str, value: Tree, path: KeyPath, places: int, problems: Problems
) -> MetricPlan | None:
    if not METRIC_NAME_RE.fullmatch(name):
        problems.add(path, "metric names are 1-64 of a-z, 0-9, '_', '.', '-', starting a-z")
    raw = problems.mapping(value, path, _METRIC_KEYS)
    if raw is None:
        return None
    if not any(key in raw for key in ("charge", "limits", "stripe_meter")):
        problems.add(path, "must set charge, limits or both (stripe_meter in place of charge)")
        return None
    meter = _stripe_meter(raw, path, problems) if "stripe_meter" in raw else None
    if "stripe_meter" in raw and meter is None:
        return None
    included: int | None = 0
    if "included" in raw:
        included = problems.integer(raw["included"], (*path, "included"))
    charge = (
        _charge(raw["charge"], (*path, "charge"), places, problems) if "charge" in raw else None
    )
    limits = _limits(name, raw.get("limits", {}), (*path, "limits"), problems)
    billed = charge is not None or meter is not None
    if limits is not None and not billed and any(lim.overage is Overage.BILL for lim in limits):
        problems.add((*path, "limits"), "overage 'bill' needs a charge for this metric")
        return None
    if included is None or limits is None or ("charge" in raw and charge is None):
        return None
    if not METRIC_NAME_RE.fullmatch(name):
        return None
    return MetricPlan(
        metric=name, charge=charge, included=included, limits=limits, stripe_meter=meter
    )


def _charge(value: Tree, path: KeyPath, places: int, problems: Problems) -> Charge | None:
    model = None
    if isinstance(value, dict):
        model_path = (*path, "model")
        if "model" not in value:
            problems.add(model_path, f"is required: one of {', '.join(sorted(_CHARGE_KEYS))}")
        else:
            model = problems.choice(value["model"], model_path, _CHARGE_KEYS)
    # Without a valid model, accept any model's keys rather than report them all as unknown.
    model_keys = (
        _CHARGE_KEYS[model] if model else tuple(k for v in _CHARGE_KEYS.values() for k in v)
    )
    allowed = ("model", *model_keys)
    raw = problems.mapping(value, path, allowed, required=_CHARGE_KEYS[model] if model else ())
    if raw is None or model is None or any(key not in raw for key in allowed):
        return None
    if model == PerUnit.model:
        unit_price = problems.money(
            raw["unit_price"], (*path, "unit_price"), max_places=UNIT_PRICE_PLACES
        )
        return None if unit_price is None else PerUnit(unit_price=unit_price)
    if model == Package.model:
        size = problems.integer(raw["package_size"], (*path, "package_size"), minimum=1)
        price = problems.money(raw["package_price"], (*path, "package_price"), max_places=places)
        if size is None or price is None:
            return None
        return Package(package_size=size, package_price=price)
    tiers = _tiers(raw["tiers"], (*path, "tiers"), places, problems)
    if tiers is None:
        return None
    return Graduated(tiers=tiers) if model == Graduated.model else Volume(tiers=tiers)


def _tiers(value: Tree, path: KeyPath, places: int, problems: Problems) -> tuple[Tier, ...] | None:
    if not isinstance(value, list) or not value:
        problems.add(path, "must be a list with at least one tier")
        return None
    tiers = [_tier(raw, (*path, index), places, problems) for index, raw in enumerate(value)]
    ordered = _check_tier_order(value, path, problems)
    built = tuple(tier for tier in tiers if tier is not None)
    return built if ordered and len(built) == len(tiers) else None


def _check_tier_order(raw_tiers: list[Tree], path: KeyPath, problems: Problems) -> bool:
    """up_to strictly increasing and only the last one open-ended.

    Works on the written values so the order is checked even when a tier has other
    problems; unusable up_to values are skipped (``_tier`` reports them).
    """
    bounds = [(i, _written_up_to(raw)) for i, raw in enumerate(raw_tiers)]
    usable = [(i, bound) for i, (ok, bound) in bounds if ok]
    ok = True
    for (index, lower), (next_index, upper) in itertools.pairwise(usable):
        if lower is None:
            problems.add((*path, index, "up_to"), "only the last tier may have up_to: null")
            ok = False
        elif upper is not None and upper <= lower:
            message = f"must be strictly increasing: greater than the previous {lower}"
            problems.add((*path, next_index, "up_to"), message)
            ok = False
    last_ok, last = bounds[-1][1]
    if last_ok and last is not None:
        problems.add((*path, len(bounds) - 1, "up_to"), "the last tier must have up_to: null")
    return ok and last_ok and last is None


def _written_up_to(value: Tree) -> tuple[bool, int | None]:
    """(usable, up_to) as written: a whole number, or None for open-ended."""
    if not isinstance(value, dict) or "up_to" not in value:
        return False, None
    up_to = value["up_to"]
    if up_to is None:
        return True, None
    if isinstance(up_to, str) and _DIGITS_RE.fullmatch(up_to):
        return True, int(up_to)
    return False, None


def _tier(value: Tree, path: KeyPath, places: int, problems: Problems) -> Tier | None:
    raw = problems.mapping(value, path, _TIER_KEYS, required=("up_to", "unit_price"))
    if raw is None or "up_to" not in raw or "unit_price" not in raw:
        return None
    up_to: int | None = None
    if raw["up_to"] is not None:
        up_to = problems.integer(raw["up_to"], (*path, "up_to"), minimum=1)
        if up_to is None:
            return None
    unit_price = problems.money(
        raw["unit_price"], (*path, "unit_price"), max_places=UNIT_PRICE_PLACES
    )
    flat_fee: Decimal | None = Decimal(0)
    if "flat_fee" in raw:
        flat_fee = problems.money(raw["flat_fee"], (*path, "flat_fee"), max_places=places)
    if unit_price is None or flat_fee is None:
        return None
    return Tier(up_to=up_to, unit_price=unit_price, flat_fee=flat_fee)


def _limits(
    metric: str, value: Tree, path: KeyPath, problems: Problems
) -> tuple[Limit, ...] | None:
    raw = problems.mapping(value, path, _WINDOW_NAMES)
    if raw is None:
        return None
    limits = [_limit(metric, key, item, (*path, key), problems) for key, item in raw.items()]
    if any(limit is None for limit in limits):
        return None
    built = [limit for limit in limits if limit is not None]
    return tuple(sorted(built, key=lambda limit: _WINDOW_ORDER[limit.window]))


def _limit(metric: str, key: str, value: Tree, path: KeyPath, problems: Problems) -> Limit | None:
    if key not in _WINDOW_NAMES:
        return None  # already reported as an unknown key
    window = Window(key)
    if not isinstance(value, dict):
        number = problems.integer(value, path)
        return None if number is None else Limit(metric, window, number, Overage.BLOCK)
    raw = problems.mapping(value, path, _LIMIT_KEYS, required=("limit",))
    if raw is None or "limit" not in raw:
        return None
    number = problems.integer(raw["limit"], (*path, "limit"))
    mode = LimitMode.ENFORCE
    if "mode" in raw:
        chosen_mode = problems.choice(raw["mode"], (*path, "mode"), [m.value for m in LimitMode])
        if chosen_mode is None:
            return None
        mode = LimitMode(chosen_mode)
    overage = Overage.BLOCK
    if "overage" in raw:
        chosen = problems.choice(raw["overage"], (*path, "overage"), [o.value for o in Overage])
        if chosen is None:
            return None
        overage = Overage(chosen)
    if overage is Overage.BILL and mode is LimitMode.SHADOW:
        problems.add((*path, "mode"), "a shadow limit never refuses, so it has no overage 'bill'")
        return None
    if overage is Overage.BILL and window is not Window.MONTH:
        problems.add((*path, "overage"), "overage 'bill' is only allowed on the month window")
        return None
    return None if number is None else Limit(metric, window, number, overage, mode)
