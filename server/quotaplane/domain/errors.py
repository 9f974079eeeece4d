"""Domain errors: what a caller did wrong, or what the system cannot do now.

Each class maps to exactly one gRPC status code in ``transport/grpc/status.py``;
a unit test walks this hierarchy to prove that every class is mapped.
Messages are written for the caller: they name the field and the bad value.
"""

from __future__ import annotations


class QuotaplaneError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(QuotaplaneError):
    """The request is malformed: a field is missing, out of range or unparsable."""


class NotFound(QuotaplaneError):
    """A named thing (tenant, API key, plan, invoice) does not exist."""


class AlreadyExists(QuotaplaneError):
    """A thing with the same unique identity already exists."""


class FailedPrecondition(QuotaplaneError):
    """The request is well formed but the system is not in a state that allows it."""


class Unauthenticated(QuotaplaneError):
    """No credentials, or credentials that match nothing."""


class PermissionDenied(QuotaplaneError):
    """Valid credentials that are not allowed to do this."""


class Unavailable(QuotaplaneError):
    """A dependency (Redis, the ledger database, Stripe) cannot be reached now; retry later."""


class PlanFileError(InvalidArgument):
    """A plans file failed validation; ``problems`` holds one ``file:path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems) if problems else "invalid plans file")
        self.problems = problems


SHOWN_CHARS = 64


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted for an error message: at most ``limit`` characters of it, so a huge bad
    value is never echoed back (status messages travel in size-limited metadata)."""
    text = value if isinstance(value, str) else str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
