"""AdminService servicer: decode protobuf, call the admin use cases, encode the result."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from quotaplane.domain.audit.log import AuditLog
from quotaplane.domain.billing.admin import InvoiceAdmin, UsageReports
from quotaplane.domain.plans.registry import PlanAdmin
from quotaplane.domain.tenants.admin import TenantAdmin
from quotaplane.domain.tenants.api_keys import ApiKeyAdmin
from quotaplane.transport.grpc import admin_convert as convert
from quotaplane.transport.grpc import control_convert
from quotaplane.transport.grpc.auth import current_credential
from quotaplane.transport.grpc.billing_convert import invoice as invoice_message
from quotaplane.transport.grpc.status import rpc
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, types_pb2

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Operators' RPCs. Authentication is enforced by the token check (auth.TokenCheck)."""

    def __init__(
        self,
        *,
        tenants: TenantAdmin,
        keys: ApiKeyAdmin,
        plans: PlanAdmin,
        usage: UsageReports,
        invoices: InvoiceAdmin,
        audit: AuditLog,
    ) -> None:
        self._audit = audit
        self._tenants = tenants
        self._keys = keys
        self._plans = plans
        self._usage = usage
        self._invoices = invoices

    # --- tenants -------------------------------------------------------------------------------

    @rpc
    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: Context
    ) -> types_pb2.Tenant:
        created = await self._tenants.create(
            name=request.name, plan=request.plan, external_id=request.external_id
        )
        return convert.tenant(created)

    @rpc
    async def GetTenant(
        self, request: admin_pb2.GetTenantRequest, context: Context
    ) -> types_pb2.Tenant:
        return convert.tenant(await self._tenants.get(request.tenant_id))

    @rpc
    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: Context
    ) -> admin_pb2.ListTenantsResponse:
        page = await self._tenants.list(
            page_size=request.page_size,
            page_token=request.page_token,
            plan=request.plan,
            status=convert.status_filter(request.status),
        )
        return admin_pb2.ListTenantsResponse(
            tenants=[convert.tenant(t) for t in page.tenants],
            next_page_token=page.next_page_token,
        )

    @rpc
    async def UpdateTenantPlan(
        self, request: admin_pb2.UpdateTenantPlanRequest, context: Context
    ) -> types_pb2.Tenant:
        updated = await self._tenants.update_plan(tenant_id=request.tenant_id, plan=request.plan)
        return convert.tenant(updated)

    @rpc
    async def SuspendTenant(
        self, request: admin_pb2.SuspendTenantRequest, context: Context
    ) -> types_pb2.Tenant:
        suspended = await self._tenants.suspend(tenant_id=request.tenant_id, reason=request.reason)
        return convert.tenant(suspended)

    @rpc
    async def ResumeTenant(
        self, request: admin_pb2.ResumeTenantRequest, context: Context
    ) -> types_pb2.Tenant:
        return convert.tenant(await self._tenants.resume(tenant_id=request.tenant_id))

    # --- API keys ------------------------------------------------------------------------------

    @rpc
    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_pb2.CreateApiKeyResponse:
        key, secret = await self._keys.create(tenant_id=request.tenant_id, name=request.name)
        return admin_pb2.CreateApiKeyResponse(key=convert.api_key(key), secret=secret)

    @rpc
    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Context
    ) -> admin_pb2.ListApiKeysResponse:
        keys = await self._keys.list(
            tenant_id=request.tenant_id, include_revoked=request.include_revoked
        )
        return admin_pb2.ListApiKeysResponse(keys=[convert.api_key(k) for k in keys])

    @rpc
    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Context
    ) -> types_pb2.ApiKey:
        return convert.api_key(await self._keys.revoke(request.key_id))

    # --- plans ---------------------------------------------------------------------------------

    @rpc
    async def ListPlans(
        self, request: admin_pb2.ListPlansRequest, context: Context
    ) -> admin_pb2.ListPlansResponse:
        return convert.plans_response(self._plans.current())

    @rpc
    async def ReloadPlans(
        self, request: admin_pb2.ReloadPlansRequest, context: Context
    ) -> admin_pb2.ListPlansResponse:
        await self._plans.reload(applied_by=current_credential())
        return convert.plans_response(self._plans.current())

    @rpc
    async def ApplyPlans(
        self, request: admin_pb2.ApplyPlansRequest, context: Context
    ) -> admin_pb2.ApplyPlansResponse:
        applied = await self._plans.apply(
            request.document, source=request.source, applied_by=current_credential()
        )
        return control_convert.applied(applied)

    @rpc
    async def ListPlanVersions(
        self, request: admin_pb2.ListPlanVersionsRequest, context: Context
    ) -> admin_pb2.ListPlanVersionsResponse:
        page = await self._plans.history(page_size=request.page_size, page_token=request.page_token)
        document = request.include_document
        return admin_pb2.ListPlanVersionsResponse(
            versions=[control_convert.plan_version(v, document=document) for v in page.versions],
            next_page_token=page.next_page_token,
        )

    @rpc
    async def RollbackPlans(
        self, request: admin_pb2.RollbackPlansRequest, context: Context
    ) -> admin_pb2.ApplyPlansResponse:
        applied = await self._plans.rollback(request.version, applied_by=current_credential())
        return control_convert.applied(applied)

    # --- overrides -----------------------------------------------------------------------------

    @rpc
    async def SetTenantOverrides(
        self, request: admin_pb2.SetTenantOverridesRequest, context: Context
    ) -> types_pb2.Tenant:
        tenant = await self._tenants.set_overrides(
            tenant_id=request.tenant_id, document=request.document
        )
        return convert.tenant(tenant)

    @rpc
    async def ClearTenantOverrides(
        self, request: admin_pb2.ClearTenantOverridesRequest, context: Context
    ) -> types_pb2.Tenant:
        return convert.tenant(await self._tenants.clear_overrides(tenant_id=request.tenant_id))

    # --- audit ---------------------------------------------------------------------------------

    @rpc
    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, context: Context
    ) -> admin_pb2.ListAuditEventsResponse:
        page = await self._audit.list(
            method=request.method,
            tenant_id=request.tenant_id,
            start=convert.optional_time(request.start, request.HasField("start"), "start"),
            end=convert.optional_time(request.end, request.HasField("end"), "end"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return admin_pb2.ListAuditEventsResponse(
            events=[control_convert.audit_event(e) for e in page.events],
            next_page_token=page.next_page_token,
        )

    # --- usage ---------------------------------------------------------------------------------

    @rpc
    async def GetUsage(
        self, request: admin_pb2.GetUsageRequest, context: Context
    ) -> admin_pb2.GetUsageResponse:
        report = await self._usage.usage(
            tenant_id=request.tenant_id,
            metric=request.metric,
            start=convert.optional_time(request.start, request.HasField("start"), "start"),
            end=convert.optional_time(request.end, request.HasField("end"), "end"),
            bucket=convert.usage_bucket(request.bucket),
        )
        return convert.usage_response(report)

    # --- invoices ------------------------------------------------------------------------------

    @rpc
    async def ListInvoices(
        self, request: admin_pb2.ListInvoicesRequest, context: Context
    ) -> admin_pb2.ListInvoicesResponse:
        page = await self._invoices.list(
            tenant_id=request.tenant_id,
            period=request.period,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return admin_pb2.ListInvoicesResponse(
            invoices=[invoice_message(i) for i in page.invoices],
            next_page_token=page.next_page_token,
            late_usage=[
                admin_pb2.LateUsage(
                    tenant_id=u.tenant_id, period=u.period, metric=u.metric, quantity=u.quantity
                )
                for u in page.late_usage
            ],
        )

    @rpc
    async def GetInvoice(
        self, request: admin_pb2.GetInvoiceRequest, context: Context
    ) -> types_pb2.Invoice:
        return invoice_message(await self._invoices.get(request.invoice_id))

    @rpc
    async def VoidInvoice(
        self, request: admin_pb2.VoidInvoiceRequest, context: Context
    ) -> types_pb2.Invoice:
        voided = await self._invoices.void(invoice_id=request.invoice_id, reason=request.reason)
        return invoice_message(voided)
