"""Which calls the audit trail records, and what of a request it keeps."""

from __future__ import annotations

import json

from quotaplane.transport.grpc.audit import audited, is_mutation, redacted, request_json
from quotaplane.transport.grpc.auth import ADMIN_SERVICE
from quotaplane_client.v1 import admin_pb2, quota_pb2


def test_every_admin_method_but_reads_is_a_mutation_by_its_name() -> None:
    methods = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods
    mutations = {m.name for m in methods if is_mutation(f"{ADMIN_SERVICE}/{m.name}")}
    assert mutations == {m.name for m in methods if not m.name.startswith(("Get", "List"))}
    assert {"CreateTenant", "RevokeApiKey", "ApplyPlans", "SetTenantOverrides"} <= mutations
    assert not is_mutation("quotaplane.v1.QuotaService/CheckQuota")


def test_generate_invoice_is_audited_only_when_it_finalizes_forces_or_pushes() -> None:
    method = "quotaplane.v1.QuotaService/GenerateInvoice"
    assert is_mutation(method)
    assert not audited(method, quota_pb2.GenerateInvoiceRequest(period="2026-11"))
    assert audited(method, quota_pb2.GenerateInvoiceRequest(period="2026-11", finalize=True))
    assert audited(method, quota_pb2.GenerateInvoiceRequest(push_to_stripe=True))


def test_secrets_are_redacted_and_long_texts_summarised() -> None:
    body = {"name": "x", "webhook_secret": "s3", "nested": [{"api_token": "t"}], "doc": "y" * 3000}
    kept = redacted(body)
    assert kept["name"] == "x" and kept["webhook_secret"] == "[redacted]"
    assert kept["nested"] == [{"api_token": "[redacted]"}]
    assert kept["doc"].startswith("<3000 characters, sha256 ")
    request = admin_pb2.SuspendTenantRequest(tenant_id="t", reason="late")
    assert json.loads(request_json(request)) == {"reason": "late", "tenant_id": "t"}
    assert request_json(object()) == "{}"  # a request that did not decode
