"""Bearer-token interceptor: AdminService needs the admin token, QuotaService optionally one.

Tokens are compared in constant time. A tenant's API key presented to AdminService is refused
with PERMISSION_DENIED (it is a credential, just not one for this service).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

ADMIN_PREFIX = "/quotaplane.v1.AdminService/"
QUOTA_PREFIX = "/quotaplane.v1.QuotaService/"
API_KEY_PREFIX = "qp_live_"


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(deny)


def check_token(presented: str | None, expected: str, service: str) -> grpc.RpcMethodHandler | None:
    """None when ``presented`` matches ``expected``; otherwise a handler that refuses the call."""
    if presented is None:
        return _deny(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{service} needs 'authorization: Bearer <token>' metadata",
        )
    if hmac.compare_digest(presented.encode(), expected.encode()):
        return None
    if presented.startswith(API_KEY_PREFIX):
        return _deny(grpc.StatusCode.PERMISSION_DENIED, f"API keys cannot call {service}")
    return _deny(grpc.StatusCode.UNAUTHENTICATED, f"wrong token for {service}")


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, admin_token: str, service_token: str = "") -> None:
        if not admin_token:
            raise ValueError("admin_token must not be empty")
        self._admin_token = admin_token
        self._service_token = service_token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        refusal = None
        if method.startswith(ADMIN_PREFIX):
            refusal = check_token(
                bearer_token(details.invocation_metadata), self._admin_token, "AdminService"
            )
        elif self._service_token and method.startswith(QUOTA_PREFIX):
            refusal = check_token(
                bearer_token(details.invocation_metadata), self._service_token, "QuotaService"
            )
        return refusal if refusal is not None else await continuation(details)
