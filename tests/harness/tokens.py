"""Channels that present the token each RPC needs, as a well-behaved internal client would.

The role an RPC needs comes from the server's own table (``transport/grpc/auth.NEEDED``), so
the tests never restate it; the first role of the method's that has a token is presented.
Tests of the refusals themselves call without this channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc

from quotaplane.app.credentials import Tokens
from quotaplane.transport.grpc.auth import NEEDED, Role

SERVICE_TOKEN = "test-service-token"
BILLING_TOKEN = "test-billing-token"


class _RoleTokens(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, tokens: Mapping[Role, str]) -> None:
        self._tokens = tokens

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        raw = details.method
        method = (raw.decode() if isinstance(raw, bytes) else raw).lstrip("/")
        needed = NEEDED.get(method) or NEEDED.get(method.partition("/")[0])
        token = self._token(needed(request)) if needed else None
        if token:
            metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
            details = details._replace(metadata=metadata)
        return await continuation(details, request)

    def _token(self, roles: frozenset[Role]) -> str | None:
        for role in (Role.SERVICE, Role.BILLING, Role.ADMIN):
            if role in roles and self._tokens.get(role):
                return self._tokens[role]
        return None


def token_channel(target: str, tokens: Tokens) -> grpc.aio.Channel:
    """An insecure channel to ``target`` that presents the right one of ``tokens`` per RPC."""
    by_role = {Role.ADMIN: tokens.admin, Role.SERVICE: tokens.service, Role.BILLING: tokens.billing}
    return grpc.aio.insecure_channel(target, interceptors=[_RoleTokens(by_role)])
