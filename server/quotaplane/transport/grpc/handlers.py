"""Method-handler wrapping, shared by the token check and observability (see server.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

# What a unary handler runs: (request, context) -> response.
Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
# (method "package.Service/Method", handler) -> the handler to register instead.
HandlerWrapper = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


def with_behavior(handler: grpc.RpcMethodHandler, behavior: Behavior) -> grpc.RpcMethodHandler:
    """A unary-unary handler like ``handler`` (same (de)serializers) that runs ``behavior``."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
