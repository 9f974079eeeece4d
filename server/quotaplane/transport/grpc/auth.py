"""Bearer tokens by role: which token each RPC needs, checked once per call.

Three roles, each with its own token (``authorization: Bearer <token>`` metadata):

| RPC | token |
| --- | --- |
| QuotaService.CheckQuota, Envoy's Authorization.Check | service |
| QuotaService.RecordUsage, GenerateInvoice (draft) | billing or admin |
| GenerateInvoice with finalize, force or push_to_stripe; every AdminService RPC | admin |
| health, reflection | none |

A role whose token is empty is open (the composition root allows that only on a loopback
address, when the operator opts out). No token or an unknown one is UNAUTHENTICATED; a token
of another role (or a tenant's API key) is PERMISSION_DENIED; both name the token needed.
Tokens are compared in constant time.
"""

from __future__ import annotations

import contextvars
import enum
import hmac
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2

from quotaplane.domain.tenants.api_keys import SECRET_PREFIX
from quotaplane.transport.grpc.handlers import Behavior, with_behavior
from quotaplane_client.v1 import admin_pb2, quota_pb2

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name
AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


class Role(enum.Enum):
    SERVICE = "service"
    BILLING = "billing"
    ADMIN = "admin"


Roles = frozenset[Role]
ADMIN_ONLY: Roles = frozenset({Role.ADMIN})
BILLING_OR_ADMIN: Roles = frozenset({Role.BILLING, Role.ADMIN})
SERVICE_ONLY: Roles = frozenset({Role.SERVICE})


def invoice_roles(request: Any) -> Roles:
    """A draft is billing work; closing a period or charging a customer is the admin's."""
    # getattr: a request that did not decode reaches this check as a stand-in without fields
    # (decoding.py), and is refused as INVALID_ARGUMENT after it.
    if any(getattr(request, name, False) for name in ("finalize", "force", "push_to_stripe")):
        return ADMIN_ONLY
    return BILLING_OR_ADMIN


# Per method (or per service, for every method of it): the roles that may call it.
NEEDED: Mapping[str, Callable[[Any], Roles]] = {
    f"{QUOTA_SERVICE}/CheckQuota": lambda _: SERVICE_ONLY,
    f"{AUTHZ_SERVICE}/Check": lambda _: SERVICE_ONLY,
    f"{QUOTA_SERVICE}/RecordUsage": lambda _: BILLING_OR_ADMIN,
    f"{QUOTA_SERVICE}/GenerateInvoice": invoice_roles,
    ADMIN_SERVICE: lambda _: ADMIN_ONLY,
}


# The name of the credential the running call presented (its role), for the audit trail and
# for what a call records as its author; set by the token check, per call.
_CREDENTIAL: contextvars.ContextVar[str] = contextvars.ContextVar(
    "quotaplane_credential", default=""
)
OPEN = "open"  # the name of the credential of a call to an open role without a known token


def current_credential() -> str:
    """The running call's credential name ("admin", "billing", "service" or "open")."""
    return _CREDENTIAL.get() or OPEN


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenCheck:
    """Puts the token check in front of each protected method, once, at registration (``wrap``).

    ``tokens``: each role's token; an empty one leaves the role open.
    """

    def __init__(self, tokens: Mapping[Role, str]) -> None:
        if not tokens.get(Role.ADMIN):
            raise ValueError("the admin token must not be empty")
        self._tokens = {role: token.encode() for role, token in tokens.items()}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` behind the token its method needs (``method``: "pkg.Service/Method")."""
        needed = NEEDED.get(method) or NEEDED.get(method.partition("/")[0])
        if needed is None:
            return handler
        if handler.unary_unary is None:
            raise ValueError(f"{method}: only unary methods can be token-protected")
        return with_behavior(handler, self._checked(handler.unary_unary, method, needed))

    def refusal(
        self, presented: str | None, roles: Roles, method: str
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when ``presented`` may call ``method`` (open to ``roles``); else the refusal."""
        if any(not self._tokens.get(role) for role in roles):
            return None  # an open role: the operator opted out on a loopback address
        needs = f"{method.rpartition('/')[2] or method} needs the {_names(roles)} token"
        if presented is None:
            return grpc.StatusCode.UNAUTHENTICATED, f"{needs} ('authorization: Bearer <token>')"
        role = self._role_of(presented.encode())
        if role in roles:
            return None
        if role is not None:
            return grpc.StatusCode.PERMISSION_DENIED, f"the {role.value} token is refused: {needs}"
        if presented.startswith(SECRET_PREFIX):
            return grpc.StatusCode.PERMISSION_DENIED, f"an API key is refused: {needs}"
        return grpc.StatusCode.UNAUTHENTICATED, f"unknown token: {needs}"

    def credential_name(self, presented: str | None) -> str:
        """The name of an accepted credential: its role, or ``open`` for an open role."""
        role = self._role_of(presented.encode()) if presented else None
        return role.value if role is not None else OPEN

    def _role_of(self, presented: bytes) -> Role | None:
        found = None
        for role in (Role.ADMIN, Role.BILLING, Role.SERVICE):  # every compare runs: no timing
            token = self._tokens.get(role)
            if token and hmac.compare_digest(presented, token) and found is None:
                found = role
        return found

    def _checked(self, behavior: Behavior, method: str, needed: Callable[[Any], Roles]) -> Behavior:
        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            presented = bearer_token(context.invocation_metadata())
            refused = self.refusal(presented, needed(request), method)
            if refused is not None:
                await context.abort(*refused)
            _CREDENTIAL.set(self.credential_name(presented))
            return await behavior(request, context)

        return checked


def _names(roles: Roles) -> str:
    return " or ".join(role.value for role in Role if role in roles)
