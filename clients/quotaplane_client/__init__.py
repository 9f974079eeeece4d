"""quotaplane's Python client: generated stubs (``quotaplane_client.v1``) and typed clients."""

from quotaplane_client.client import (
    AsyncQuotaplaneClient,
    QuotaplaneClient,
    RetryPolicy,
    check_quota_request,
    usage_event,
)

__all__ = [
    "AsyncQuotaplaneClient",
    "QuotaplaneClient",
    "RetryPolicy",
    "check_quota_request",
    "usage_event",
]
