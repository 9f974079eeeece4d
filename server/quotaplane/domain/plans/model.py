"""Plans: what each plan limits and charges per metric, and the catalog of all plans.

Plans come from a YAML file (``QUOTAPLANE_PLANS``, else the packaged
``default_plans.yaml``) read by :func:`load_plans`, which validates it strictly and
reports every problem as ``<file>:<path.to.key>: <message>``
(``integrations/plans_file.py`` reads it, ``rules.py`` validates it).

The seed shorthand loads unchanged::

    plans:
      growth: {price_per_1000_requests: 0.04, monthly_quota: 50000}

and means: currency USD (or the file's ``currency``), metric ``requests`` charged by the
package model (packages of 1,000 at the price, a started package counted whole) and a
monthly limit of ``monthly_quota`` that blocks at the quota. A shorthand plan may also set
``currency`` and ``base_fee``, but not ``metrics``.

The full format::

    currency: USD                    # optional default for every plan (default USD)
    plans:
      pro:                           # plan name: [a-z0-9][a-z0-9_-]{0,63}
        currency: EUR                # optional, overrides the default
        base_fee: "49.00"            # optional, per month, at most the currency's places
        spend_cap: "500.00"          # optional: the month's invoice total never exceeds it
        metrics:                     # at least one metric
          requests:                  # metric name: [a-z][a-z0-9_.-]{0,63}
            included: 10000          # optional free units per month, before any charge
            charge:                  # optional (no charge = free); one of four models:
              model: graduated       # per_unit | package | graduated | volume
              tiers:
                - {up_to: 100000, unit_price: "0.0005"}
                - {up_to: null, unit_price: "0.0003", flat_fee: "1.00"}
            limits:                  # optional; window -> limit
              month: {limit: 1000000, overage: bill}
              hour: {limit: 20000, mode: shadow}   # counted and reported, never denies
              second: 50             # short form: the limit, overage block
              minute: 1000
          rating.bulk:
            charge: {model: per_unit, unit_price: "0.002"}
            limits: {day: 5000}
      metered:
        metrics:
          requests:
            stripe_meter: openclaw_requests   # priced in Stripe (a Billing Meter's event_name)
            limits: {month: {limit: 1000000, overage: bill}}

Priced in Stripe: ``stripe_meter`` names the ``event_name`` of a Stripe Billing Meter instead
of a ``charge`` (the two exclude each other, and ``included`` too: free units and prices are
then Stripe's). quotaplane still enforces the limits, and reports the metric's usage to
Stripe as meter events (``services/meter_reporter.py``); its own invoice carries only the
base fee and the metrics it prices itself. ``overage: bill`` is allowed with a meter (Stripe
bills it). Two metrics of one plan cannot share a meter, whose summaries would mix them.

Charge models (``unit_price`` up to 6 decimal places; ``package_price``, ``flat_fee`` and
``base_fee`` at most the currency's minor unit, e.g. 2 for USD, 0 for JPY):

- ``per_unit``: ``unit_price`` per billable unit.
- ``package``: ``package_size`` (>= 1) and ``package_price``; a started package counts whole.
- ``graduated``: ``tiers``; each unit is priced by the tier it falls in, and a tier's
  optional ``flat_fee`` is charged once when any unit falls in it.
- ``volume``: ``tiers``; all units are priced by the tier the total falls in, plus that
  tier's ``flat_fee``.

Tiers: ``up_to`` strictly increasing whole numbers, the last one ``null`` (open-ended).
Tiers count billable units, i.e. usage minus ``included``.

Limits: windows ``second``, ``minute``, ``hour``, ``day``, ``month`` (fixed, UTC; month =
calendar month). ``overage: block`` (default) refuses at the limit; ``overage: bill``
admits and bills usage beyond it, which only makes sense for ``month`` on a charged metric.

``mode: shadow`` (default ``enforce``) makes a limit a trial: it is counted in the same atomic
step, but never denies; the requests it would have denied are reported (decision, metrics,
GetUsage). ``spend_cap`` (at most ``MAX_SPEND_CAP``, at most the currency's places) denies a
request of a charged metric that would make the month's invoice total exceed it
(``domain/billing/spend_cap.py``).

Numbers may be written as YAML numbers or strings: the loader never turns them into
floats, so ``0.05`` is exactly five cents.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import ClassVar

from quotaplane.domain.errors import NotFound, shown
from quotaplane.domain.plans.problems import Tree
from quotaplane.domain.windows import Window

DEFAULT_CURRENCY = "USD"
SEED_METRIC = "requests"
SEED_PACKAGE_SIZE = 1000
UNIT_PRICE_PLACES = 6
# Keeps the spend-cap arithmetic of the consume script exact (integers below 2**53).
MAX_SPEND_CAP = Decimal(1_000_000_000)


class LimitMode(enum.StrEnum):
    """``enforce`` denies at the limit; ``shadow`` only counts and reports would-be denials."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


class Overage(enum.StrEnum):
    """What happens beyond a limit: refuse (429), or admit and bill the extra usage."""

    BLOCK = "block"
    BILL = "bill"


@dataclass(frozen=True)
class Limit:
    metric: str
    window: Window
    limit: int
    overage: Overage = Overage.BLOCK
    mode: LimitMode = LimitMode.ENFORCE

    @property
    def name(self) -> str:
        return f"{self.metric}/{self.window.value}"

    @property
    def shadow(self) -> bool:
        return self.mode is LimitMode.SHADOW


@dataclass(frozen=True)
class PerUnit:
    model: ClassVar[str] = "per_unit"
    unit_price: Decimal


@dataclass(frozen=True)
class Package:
    model: ClassVar[str] = "package"
    package_size: int
    package_price: Decimal


@dataclass(frozen=True)
class Tier:
    up_to: int | None  # inclusive upper bound in billable units; None = open-ended
    unit_price: Decimal
    flat_fee: Decimal = Decimal(0)


@dataclass(frozen=True)
class Graduated:
    model: ClassVar[str] = "graduated"
    tiers: tuple[Tier, ...]


@dataclass(frozen=True)
class Volume:
    model: ClassVar[str] = "volume"
    tiers: tuple[Tier, ...]


Charge = PerUnit | Package | Graduated | Volume


@dataclass(frozen=True)
class MetricPlan:
    metric: str
    charge: Charge | None = None  # None: the metric is limited but free
    included: int = 0
    limits: tuple[Limit, ...] = ()
    stripe_meter: str | None = None  # priced in Stripe: the meter's event_name


@dataclass(frozen=True)
class Plan:
    name: str
    currency: str
    base_fee: Decimal
    metrics: Mapping[str, MetricPlan] = field(default_factory=dict)
    # Monthly cap on the period's invoice total, in ``currency``; None: no cap.
    spend_cap: Decimal | None = None

    def __post_init__(self) -> None:
        # Plans are shared by every request handler: keep them read-only.
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    def has_metric(self, metric: str) -> bool:
        return metric in self.metrics

    def stripe_meters(self) -> dict[str, str]:
        """metric -> Stripe meter event name, for the metrics priced in Stripe."""
        return {m.metric: m.stripe_meter for m in self.metrics.values() if m.stripe_meter}

    def limits_for(self, metric: str) -> tuple[Limit, ...]:
        """The metric's limits, shortest window first; empty for a metric the plan lacks."""
        metric_plan = self.metrics.get(metric)
        return metric_plan.limits if metric_plan else ()


@dataclass(frozen=True)
class PlanCatalog:
    """Every plan of one plans document.

    ``version`` is the document's version in the ledger (0: read from a file, not stored);
    ``digest`` identifies what the document says (``documents.digest``); ``entries`` keeps each
    plan as written, so a tenant override can be merged over it (``overrides.py``);
    ``effective`` memoizes the plans with overrides built from this catalog.
    """

    plans: Mapping[str, Plan]
    source: str
    version: int = 0
    digest: str = ""
    entries: Mapping[str, Tree] = field(default_factory=dict)
    default_currency: str = DEFAULT_CURRENCY
    effective: dict[tuple[str, str], Plan] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "plans", MappingProxyType(dict(self.plans)))
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))

    def get(self, name: str) -> Plan:
        try:
            return self.plans[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise NotFound(f"unknown plan {shown(name)}; known plans: {known}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.plans))

    def __contains__(self, name: object) -> bool:
        return name in self.plans
