"""AdminService servicer: decode protobuf, call the admin use cases, encode the result."""

from __future__ import annotations

from quotaplane.transport.grpc.pending import pending
from quotaplane_client.v1 import admin_pb2_grpc

_SVC = "quotaplane.v1.AdminService"
_TENANTS = "tenant administration: issue #7"
_KEYS = "API key administration: issue #7"
_PLANS = "plan administration: issue #7"
_USAGE = "usage reporting: issue #7"
_INVOICES = "invoice administration: issue #7"


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Operators' RPCs. Authentication is enforced by the admin-token interceptor."""

    CreateTenant = pending(f"{_SVC}/CreateTenant", _TENANTS)
    GetTenant = pending(f"{_SVC}/GetTenant", _TENANTS)
    ListTenants = pending(f"{_SVC}/ListTenants", _TENANTS)
    UpdateTenantPlan = pending(f"{_SVC}/UpdateTenantPlan", _TENANTS)
    SuspendTenant = pending(f"{_SVC}/SuspendTenant", _TENANTS)
    ResumeTenant = pending(f"{_SVC}/ResumeTenant", _TENANTS)
    CreateApiKey = pending(f"{_SVC}/CreateApiKey", _KEYS)
    ListApiKeys = pending(f"{_SVC}/ListApiKeys", _KEYS)
    RevokeApiKey = pending(f"{_SVC}/RevokeApiKey", _KEYS)
    ListPlans = pending(f"{_SVC}/ListPlans", _PLANS)
    ReloadPlans = pending(f"{_SVC}/ReloadPlans", _PLANS)
    GetUsage = pending(f"{_SVC}/GetUsage", _USAGE)
    ListInvoices = pending(f"{_SVC}/ListInvoices", _INVOICES)
    GetInvoice = pending(f"{_SVC}/GetInvoice", _INVOICES)
    VoidInvoice = pending(f"{_SVC}/VoidInvoice", _INVOICES)
