"""Every domain error maps to exactly the gRPC status the contract names."""

from __future__ import annotations

import grpc
import pytest

from quotaplane.domain import errors
from quotaplane.transport.grpc.status import STATUS_BY_ERROR, status_for


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


@pytest.mark.parametrize(
    "error_class", _all_subclasses(errors.QuotaplaneError), ids=lambda c: c.__name__
)
def test_every_domain_error_has_a_status(error_class: type[errors.QuotaplaneError]) -> None:
    instance = error_class.__new__(error_class)
    Exception.__init__(instance, "x")
    code = status_for(instance)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.OK)


def test_the_table_is_exactly_the_contract() -> None:
    expected = {
        "InvalidArgument": "INVALID_ARGUMENT",
        "PlanFileError": "INVALID_ARGUMENT",
        "NotFound": "NOT_FOUND",
        "AlreadyExists": "ALREADY_EXISTS",
        "FailedPrecondition": "FAILED_PRECONDITION",
        "Unauthenticated": "UNAUTHENTICATED",
        "PermissionDenied": "PERMISSION_DENIED",
        "Unavailable": "UNAVAILABLE",
    }
    assert {cls.__name__: code.name for cls, code in STATUS_BY_ERROR.items()} == expected


def test_the_base_class_alone_is_not_mapped() -> None:
    with pytest.raises(LookupError):
        status_for(errors.QuotaplaneError("bare"))
