"""Protobuf <-> domain values for the operator controls: plans versions and the audit trail."""

from __future__ import annotations

from quotaplane.domain.audit.ports import AuditEvent
from quotaplane.domain.plans.ports import PlanVersion
from quotaplane.domain.plans.registry import Applied
from quotaplane.transport.grpc.convert import timestamp
from quotaplane_client.v1 import admin_pb2


def plan_version(value: PlanVersion, *, document: bool = False) -> admin_pb2.PlanVersion:
    return admin_pb2.PlanVersion(
        version=value.version,
        digest=value.digest,
        source=value.source,
        applied_by=value.applied_by,
        applied_at=timestamp(value.applied_at),
        note=value.note,
        document=value.document if document else "",
    )


def applied(value: Applied) -> admin_pb2.ApplyPlansResponse:
    return admin_pb2.ApplyPlansResponse(
        version=plan_version(value.version, document=True), changed=value.changed
    )


def audit_event(value: AuditEvent) -> admin_pb2.AuditEvent:
    return admin_pb2.AuditEvent(
        id=value.id,
        time=timestamp(value.occurred_at),
        credential=value.credential,
        method=value.method,
        tenant_id=value.tenant_id or "",
        request=value.request,
        result=value.result,
        message=value.message,
    )
