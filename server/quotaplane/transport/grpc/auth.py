"""Bearer tokens: AdminService needs the admin token, QuotaService optionally one.

Tokens are compared in constant time. A tenant's API key presented to AdminService is refused
with PERMISSION_DENIED (it is a credential, just not one for this service).
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc

from quotaplane.domain.tenants.api_keys import SECRET_PREFIX
from quotaplane.transport.grpc.handlers import Behavior, with_behavior
from quotaplane_client.v1 import admin_pb2, quota_pb2

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def refusal(
    presented: str | None, expected: str, service: str
) -> tuple[grpc.StatusCode, str] | None:
    """None when ``presented`` matches ``expected``; otherwise the status to refuse with."""
    if presented is None:
        return (
            grpc.StatusCode.UNAUTHENTICATED,
            f"{service} needs 'authorization: Bearer <token>' metadata",
        )
    if hmac.compare_digest(presented.encode(), expected.encode()):
        return None
    if presented.startswith(SECRET_PREFIX):
        return grpc.StatusCode.PERMISSION_DENIED, f"API keys cannot call {service}"
    return grpc.StatusCode.UNAUTHENTICATED, f"wrong token for {service}"


class TokenCheck:
    """Puts the token check in front of each protected method, once, at registration (``wrap``).

    AdminService always needs the admin token; QuotaService needs the service token when one
    is set. Other services pass unchanged.
    """

    def __init__(self, admin_token: str, service_token: str = "") -> None:
        if not admin_token:
            raise ValueError("admin_token must not be empty")
        self._tokens = {ADMIN_SERVICE: (admin_token, "AdminService")}
        if service_token:
            self._tokens[QUOTA_SERVICE] = (service_token, "QuotaService")

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` behind the token its service needs (``method``: "pkg.Service/Method")."""
        needed = self._tokens.get(method.partition("/")[0])
        if needed is None:
            return handler
        if handler.unary_unary is None:
            raise ValueError(f"{method}: only unary methods can be token-protected")
        return with_behavior(handler, _checked(handler.unary_unary, *needed))


def _checked(behavior: Behavior, expected: str, service: str) -> Behavior:
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        refused = refusal(bearer_token(context.invocation_metadata()), expected, service)
        if refused is not None:
            await context.abort(*refused)
        return await behavior(request, context)

    return checked
