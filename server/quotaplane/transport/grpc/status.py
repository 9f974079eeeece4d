"""The one table from domain errors to gRPC status codes, and the wrapper every RPC uses.

Each handler is wrapped by ``rpc``: a domain error becomes its status code with the error's
message; anything else is a bug, logged with a reference and answered INTERNAL without leaking
details. A caller's mistake therefore never surfaces as UNKNOWN.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from quotaplane.domain import errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.QuotaplaneError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PlanFileError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: errors.QuotaplaneError) -> grpc.StatusCode:
    """The status code of the most specific mapped class in the error's MRO."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    raise LookupError(f"{type(error).__name__} has no gRPC status mapping")


S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def rpc(
    handler: Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Wrap a servicer method so that errors map through STATUS_BY_ERROR."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await handler(self, request, context)
        except errors.QuotaplaneError as exc:
            await context.abort(status_for(exc), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("unhandled error in %s (ref %s)", handler.__qualname__, ref)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); see server log"
            )
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return wrapper


__all__ = ["STATUS_BY_ERROR", "rpc", "status_for"]
