"""QuotaService servicer: decode protobuf, call the quota and billing use cases, encode."""

from __future__ import annotations

from typing import Any

import grpc

from quotaplane.domain.billing.invoicing import InvoiceService
from quotaplane.domain.billing.usage_events import UsageRecorder
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.transport.grpc import billing_convert, convert
from quotaplane.transport.grpc.status import rpc
from quotaplane_client.v1 import quota_pb2, quota_pb2_grpc, types_pb2


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    """Hot-path and billing RPCs for internal services."""

    def __init__(
        self,
        engine: QuotaEngine,
        *,
        usage: UsageRecorder,
        invoices: InvoiceService,
    ) -> None:
        self._engine = engine
        self._usage = usage
        self._invoices = invoices

    @rpc
    async def CheckQuota(
        self, request: quota_pb2.CheckQuotaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> quota_pb2.CheckQuotaResponse:
        decision = await self._engine.check(convert.quota_request(request))
        return convert.check_quota_response(decision)

    @rpc
    async def RecordUsage(
        self, request: quota_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> quota_pb2.RecordUsageResponse:
        results = await self._usage.record(billing_convert.usage_events(request))
        return billing_convert.record_usage_response(results)

    @rpc
    async def GenerateInvoice(
        self,
        request: quota_pb2.GenerateInvoiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> types_pb2.Invoice:
        stored = await self._invoices.generate(billing_convert.invoice_request(request))
        return billing_convert.invoice(stored)
