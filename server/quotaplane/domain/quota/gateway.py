"""The gateway use case behind a proxy's external authorization: API key -> tenant -> decision.

``Gateway.authorize`` turns what the proxy knows about a request (the presented key, the route's
name, metric and cost as configured) into a ``GatewayDecision``. It knows nothing of HTTP,
gRPC or Envoy: each transport (Envoy's gRPC Check, its HTTP ext_authz) maps a verdict to the
wire, so every transport applies the same rules in the same order:

1. No key, an unknown or revoked key, or a key whose tenant no longer exists -> UNAUTHENTICATED,
   before the route is looked at (a stranger learns nothing about the configuration). Instead
   of a key, a request may carry a tenant claim of a JWT that the proxy verified (issuer,
   audience, signature, expiry): it names a tenant by id or external id (``ClaimResolver``),
   and an unknown one is UNAUTHENTICATED too. A key, when present, is the identity.
2. A suspended tenant -> SUSPENDED, before the route is checked against the tenant's plan.
3. A route whose cost is not a whole number in 1..MAX_COST, whose metric is not in the tenant's
   plan, or a tenant whose plan the plans file lost -> MISCONFIGURED: a denial naming the
   problem, counted by ``on_misconfigured`` per request and logged once per (route, plan).
4. Otherwise the engine's decision: ALLOWED, OVER_LIMIT or SPEND_CAP, with every limit's state.
   An unmetered request (``metered=False``: the tenant reading its own usage) stops after
   step 2: ALLOWED for its tenant, no unit consumed, no decision.

Only a storage failure (``Unavailable``) propagates: it is the one thing the proxy's failure
mode should decide. Everything about the request, the key, the tenant or the route is a
decision, so a fail-open proxy never lets an unmetered request through.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from quotaplane.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from quotaplane.domain.quota.decisions import MAX_COST, Decision, DecisionCode, QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.domain.quota.ports import ClaimResolver, KeyResolver
from quotaplane.domain.tenants.model import Tenant

log = logging.getLogger(__name__)

DEFAULT_ROUTE_COST = "1"
# Distinct (route, plan) pairs remembered as already logged; both come from configuration, so
# the bound is only a guard against a pathological config, never reached in practice.
_LOGGED_MAX = 4096
_MAX_COST_DIGITS = len(str(MAX_COST))
_SHOWN_CHARS = 16


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"
    SUSPENDED = "suspended"
    MISCONFIGURED = "misconfigured"
    OVER_LIMIT = "over_limit"
    SPEND_CAP = "spend_cap"


@dataclass(frozen=True)
class GatewayRequest:
    """What the proxy says about one request. ``metric`` and ``cost`` are the route's
    configuration as text (checked here, so a bad value is a decision, not an error)."""

    api_key: str | None
    metric: str
    cost: str = DEFAULT_ROUTE_COST
    route: str = ""
    request_id: str | None = None
    tenant_claim: str | None = None  # verified by the proxy (a JWT claim), never client text
    metered: bool = True


@dataclass(frozen=True)
class GatewayDecision:
    verdict: Verdict
    reason: str
    tenant_id: str | None = None
    decision: Decision | None = None


class RouteMisconfigured(Exception):
    """A route's configuration cannot be metered for this tenant (a decision, not an error)."""


def parse_route_cost(raw: str) -> int:
    """A route's cost: ASCII digits only, 1..MAX_COST ('²', '١٢', '-1', '', '1e3' refused)."""
    if raw.isascii() and raw.isdigit() and len(raw) <= _MAX_COST_DIGITS:
        cost = int(raw)
        if 1 <= cost <= MAX_COST:
            return cost
    raise RouteMisconfigured(
        f"route cost {raw[:_SHOWN_CHARS]!r} is not a whole number between 1 and {MAX_COST:,}"
    )


_VERDICT_OF_CODE = {
    DecisionCode.OK: Verdict.ALLOWED,
    DecisionCode.OVER_LIMIT: Verdict.OVER_LIMIT,
    DecisionCode.SUSPENDED: Verdict.SUSPENDED,
    DecisionCode.SPEND_CAP: Verdict.SPEND_CAP,
}
_REASON_OF_VERDICT = {
    Verdict.ALLOWED: "allowed",
    Verdict.OVER_LIMIT: "quota or rate limit exceeded",
    Verdict.SUSPENDED: "tenant is suspended",
    Verdict.SPEND_CAP: "the month's invoice would exceed the spend cap",
}
# (route, plan, problem) -> None: e.g. a metrics counter.
MisconfigurationObserver = Callable[[str, str, str], None]


class Gateway:
    def __init__(
        self,
        keys: KeyResolver,
        engine: QuotaEngine,
        *,
        on_misconfigured: MisconfigurationObserver | None = None,
        claims: ClaimResolver | None = None,
    ) -> None:
        self._keys = keys
        self._claims = claims
        self._engine = engine
        self._on_misconfigured = on_misconfigured
        self._logged: set[tuple[str, str]] = set()

    async def authorize(self, request: GatewayRequest) -> GatewayDecision:
        owner = await self._owner(request)
        if isinstance(owner, GatewayDecision):
            return owner
        try:
            tenant = await self._engine.tenant(owner)
        except NotFound:
            return GatewayDecision(Verdict.UNAUTHENTICATED, "credential of a deleted tenant")
        if not tenant.active:
            return self._decided(tenant.id, Decision(False, DecisionCode.SUSPENDED, 0))
        if not request.metered:
            return GatewayDecision(Verdict.ALLOWED, "allowed (unmetered)", tenant.id)
        try:
            return self._decided(tenant.id, await self._check(tenant, request))
        except NotFound:  # deleted between the two lookups
            return GatewayDecision(Verdict.UNAUTHENTICATED, "credential of a deleted tenant")
        except RouteMisconfigured as problem:
            return self._misconfigured(request, tenant, str(problem))

    async def _owner(self, request: GatewayRequest) -> str | GatewayDecision:
        """The tenant id the credential names, or the UNAUTHENTICATED decision."""
        if request.api_key:
            owner = await self._keys.tenant_for_key(request.api_key)
            if owner is None:
                return GatewayDecision(Verdict.UNAUTHENTICATED, "unknown or revoked API key")
            return owner[0]
        if request.tenant_claim and self._claims is not None:
            tenant_id = await self._claims.tenant_for_claim(request.tenant_claim)
            if tenant_id is None:
                return GatewayDecision(Verdict.UNAUTHENTICATED, "token names no known tenant")
            return tenant_id
        return GatewayDecision(Verdict.UNAUTHENTICATED, "missing API key")

    async def _check(self, tenant: Tenant, request: GatewayRequest) -> Decision:
        cost = parse_route_cost(request.cost)
        try:
            quota_request = QuotaRequest.parse(
                tenant_id=tenant.id,
                metric=request.metric,
                cost=cost,
                request_id=request.request_id or "",
            )
            return await self._engine.check(quota_request)
        except (InvalidArgument, FailedPrecondition) as error:
            # The tenant id is ours and the rest is the route's configuration: whatever the
            # engine refuses here is a misconfiguration, not the caller's mistake.
            raise RouteMisconfigured(error.message) from None

    @staticmethod
    def _decided(tenant_id: str, decision: Decision) -> GatewayDecision:
        verdict = _VERDICT_OF_CODE[decision.code]
        return GatewayDecision(verdict, _REASON_OF_VERDICT[verdict], tenant_id, decision)

    def _misconfigured(
        self, request: GatewayRequest, tenant: Tenant, problem: str
    ) -> GatewayDecision:
        route = request.route or f"metric={request.metric[:_SHOWN_CHARS]}"
        if self._on_misconfigured is not None:
            self._on_misconfigured(route, tenant.plan, problem)
        if (route, tenant.plan) not in self._logged and len(self._logged) < _LOGGED_MAX:
            self._logged.add((route, tenant.plan))
            log.error(
                "route cannot be metered; its requests are denied until the config is fixed",
                extra={"route": route, "plan": tenant.plan, "problem": problem},
            )
        reason = f"route {route!r} is misconfigured for plan {tenant.plan!r}: {problem}"
        return GatewayDecision(Verdict.MISCONFIGURED, reason, tenant.id)
