"""Per-tenant overrides and the effective plan: a tenant's plan with its overrides merged in.

An override is a partial plan entry (the keys of a plan in the plans file: ``base_fee``,
``currency``, ``metrics.<metric>.limits``, ``.charge``, ``.included``, and any key the plan
rules learn later) merged over the entry of the tenant's plan (``documents.merge_patch``) and
built by the same rules (``rules.build_plan``). The result is a normal ``Plan`` under the
plan's name, so the quota engine and pricing use it like any other. For a plan written in the
seed shorthand, an override of ``monthly_quota`` or ``price_per_1000_requests`` merges into
the shorthand; an override that reaches into ``metrics`` merges into the plan's full form.

Effective plans are memoized on the catalog per (plan, override), so the hot path builds
one once per plans version.
"""

from __future__ import annotations

from dataclasses import dataclass

from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, PlanFileError
from quotaplane.domain.plans.documents import (
    canonical,
    changed_paths,
    expand_seed_entry,
    is_seed_entry,
    merge_patch,
)
from quotaplane.domain.plans.model import Plan, PlanCatalog
from quotaplane.domain.plans.problems import Tree
from quotaplane.domain.plans.rules import build_plan

MEMO_MAX = 100_000


@dataclass(frozen=True)
class PlanOverride:
    """A tenant's override document and its canonical text (its identity)."""

    document: dict[str, Tree]
    key: str

    @classmethod
    def of(cls, document: Tree) -> PlanOverride | None:
        """The override a stored or requested document means; None for none or empty."""
        if document is None or document == {}:
            return None
        if not isinstance(document, dict):
            raise InvalidArgument("overrides must be a mapping of plan keys, like a plan entry")
        return cls(document=document, key=canonical(document))

    def paths(self) -> list[str]:
        """The dotted key paths the override sets (or removes)."""
        return changed_paths({}, _marked(self.document))


def _marked(tree: Tree) -> Tree:
    """``tree`` with removals (null) made visible to ``changed_paths``."""
    if isinstance(tree, dict):
        return {key: _marked(value) if value is not None else "~" for key, value in tree.items()}
    return tree


def merged_entry(catalog: PlanCatalog, plan_name: str, override: PlanOverride) -> Tree:
    """The plan's entry with the override merged in (see the module docstring)."""
    catalog.get(plan_name)  # NotFound for an unknown plan
    base = catalog.entries[plan_name]
    if isinstance(base, dict) and is_seed_entry(base) and "metrics" in override.document:
        base = expand_seed_entry(base)
    return merge_patch(base, override.document)


def build_effective(catalog: PlanCatalog, plan_name: str, override: PlanOverride) -> Plan:
    """The effective plan; PlanFileError (INVALID_ARGUMENT) naming each problem."""
    entry = merged_entry(catalog, plan_name, override)
    source = f"overrides on plan {plan_name}"
    return build_plan(plan_name, entry, catalog.default_currency, source)


def effective_plan(catalog: PlanCatalog, plan_name: str, override: PlanOverride | None) -> Plan:
    """The plan a tenant on ``plan_name`` with ``override`` is limited and billed by.

    NotFound for an unknown plan; FailedPrecondition when the override no longer fits the
    plan (the plans changed under it): the tenant's operator must fix the override.
    """
    if override is None:
        return catalog.get(plan_name)
    memo = catalog.effective
    plan = memo.get((plan_name, override.key))
    if plan is None:
        try:
            plan = build_effective(catalog, plan_name, override)
        except PlanFileError as error:
            raise FailedPrecondition(
                f"the tenant's overrides do not fit plan {plan_name!r} of plans version "
                f"{catalog.version}: {error.message}"
            ) from None
        if len(memo) >= MEMO_MAX:
            memo.clear()
        memo[(plan_name, override.key)] = plan
    return plan


def overridden_lines(base: Plan, effective: Plan) -> dict[str, bool]:
    """Per metric (and ``base_fee``) whether the override changed how it is limited or billed."""
    changed = {"base_fee": base.base_fee != effective.base_fee}
    for metric in set(base.metrics) | set(effective.metrics):
        changed[metric] = base.metrics.get(metric) != effective.metrics.get(metric)
    return changed
