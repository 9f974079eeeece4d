"""The gateway use case behind Envoy's ext_authz: API key -> tenant -> one quota decision.

``Gateway.authorize`` turns what the proxy knows about a request (the presented key, the route's
metric and cost) into a ``Verdict``. It knows nothing of HTTP or Envoy: the transport turns a
verdict into a 401/403/429 or an allowed response with headers.

- No key, an unknown key or a revoked key -> UNAUTHENTICATED. A key whose tenant no longer
  exists is treated the same: the caller's credential matches nothing that can be charged.
- A suspended tenant -> SUSPENDED (the quota engine answers that without consuming).
- Otherwise the engine's decision: ALLOWED or OVER_LIMIT, with every limit's state.
Storage failures propagate as ``Unavailable``; the proxy's failure mode then decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from quotaplane.domain.errors import NotFound
from quotaplane.domain.quota.decisions import Decision, DecisionCode, QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.domain.quota.ports import KeyResolver


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"
    SUSPENDED = "suspended"
    OVER_LIMIT = "over_limit"


@dataclass(frozen=True)
class GatewayRequest:
    api_key: str | None
    metric: str
    cost: int
    request_id: str | None = None


@dataclass(frozen=True)
class GatewayDecision:
    verdict: Verdict
    reason: str
    tenant_id: str | None = None
    decision: Decision | None = None


_VERDICT_OF_CODE = {
    DecisionCode.OK: Verdict.ALLOWED,
    DecisionCode.OVER_LIMIT: Verdict.OVER_LIMIT,
    DecisionCode.SUSPENDED: Verdict.SUSPENDED,
}
_REASON_OF_VERDICT = {
    Verdict.ALLOWED: "allowed",
    Verdict.OVER_LIMIT: "quota or rate limit exceeded",
    Verdict.SUSPENDED: "tenant is suspended",
}


class Gateway:
    def __init__(self, keys: KeyResolver, engine: QuotaEngine) -> None:
        self._keys = keys
        self._engine = engine

    async def authorize(self, request: GatewayRequest) -> GatewayDecision:
        if not request.api_key:
            return GatewayDecision(Verdict.UNAUTHENTICATED, "missing API key")
        owner = await self._keys.tenant_for_key(request.api_key)
        if owner is None:
            return GatewayDecision(Verdict.UNAUTHENTICATED, "unknown or revoked API key")
        tenant_id, _ = owner
        quota_request = QuotaRequest.parse(
            tenant_id=tenant_id,
            metric=request.metric,
            cost=request.cost,
            request_id=request.request_id or "",
        )
        try:
            decision = await self._engine.check(quota_request)
        except NotFound:
            return GatewayDecision(Verdict.UNAUTHENTICATED, "API key of a deleted tenant")
        verdict = _VERDICT_OF_CODE[decision.code]
        return GatewayDecision(verdict, _REASON_OF_VERDICT[verdict], tenant_id, decision)
