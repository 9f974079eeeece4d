"""Handlers for RPCs of the contract that this build does not serve yet.

They answer UNIMPLEMENTED with a message naming the RPC and the work that brings it, so a caller
sees what is missing instead of the generated code's bare "Method not implemented!".
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from quotaplane.domain.errors import Unimplemented
from quotaplane.transport.grpc.status import rpc


def pending(full_method: str, arrives_with: str) -> Any:
    """A servicer method that always answers UNIMPLEMENTED for ``full_method``."""

    @rpc
    async def handler(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> NoReturn:
        raise Unimplemented(f"{full_method} is not served by this build yet ({arrives_with})")

    handler.__name__ = full_method.rsplit("/", 1)[-1]
    handler.pending = True  # type: ignore[attr-defined]
    return handler
