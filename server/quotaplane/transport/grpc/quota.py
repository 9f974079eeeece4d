"""QuotaService servicer: decode protobuf, call the quota and billing use cases, encode."""

from __future__ import annotations

from quotaplane.transport.grpc.pending import pending
from quotaplane_client.v1 import quota_pb2_grpc

_SVC = "quotaplane.v1.QuotaService"


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    """Hot-path and billing RPCs for internal services."""

    CheckQuota = pending(f"{_SVC}/CheckQuota", "the quota engine: issue #4")
    RecordUsage = pending(f"{_SVC}/RecordUsage", "the billing ledger: issue #5")
    GenerateInvoice = pending(f"{_SVC}/GenerateInvoice", "the billing ledger: issue #5")
