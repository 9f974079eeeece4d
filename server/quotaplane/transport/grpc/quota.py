"""QuotaService servicer: decode protobuf, call the quota and billing use cases, encode."""

from __future__ import annotations

from typing import Any

import grpc
from quotaplane_client.v1 import quota_pb2, quota_pb2_grpc

from quotaplane.domain.quota import QuotaEngine
from quotaplane.transport.grpc import convert
from quotaplane.transport.grpc.pending import pending
from quotaplane.transport.grpc.status import rpc

_SVC = "quotaplane.v1.QuotaService"


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    """Hot-path and billing RPCs for internal services."""

    def __init__(self, engine: QuotaEngine) -> None:
        self._engine = engine

    @rpc
    async def CheckQuota(
        self, request: quota_pb2.CheckQuotaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> quota_pb2.CheckQuotaResponse:
        decision = await self._engine.check(convert.quota_request(request))
        return convert.check_quota_response(decision)

    RecordUsage = pending(f"{_SVC}/RecordUsage", "the billing ledger: issue #5")
    GenerateInvoice = pending(f"{_SVC}/GenerateInvoice", "the billing ledger: issue #5")
