"""Protobuf <-> domain values for AdminService; the only place that knows both shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from quotaplane.domain.billing.admin import UsageReport
from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.plans.model import MetricPlan, Plan
from quotaplane.domain.plans.registry import PlanRegistry
from quotaplane.domain.plans.summary import metric_price
from quotaplane.domain.tenants.model import ApiKey, Tenant, TenantStatus
from quotaplane.domain.windows import Window
from quotaplane.transport.grpc.convert import OVERAGE_POLICIES, WINDOWS, timestamp
from quotaplane_client.v1 import admin_pb2, types_pb2

TENANT_STATUSES: dict[TenantStatus, types_pb2.Tenant.Status.ValueType] = {
    TenantStatus.ACTIVE: types_pb2.Tenant.ACTIVE,
    TenantStatus.SUSPENDED: types_pb2.Tenant.SUSPENDED,
}
_STATUS_BY_NUMBER = {number: status for status, number in TENANT_STATUSES.items()}


def status_filter(value: int) -> TenantStatus | None:
    """A ListTenants status filter: UNSPECIFIED means any status."""
    if value == types_pb2.Tenant.STATUS_UNSPECIFIED:
        return None
    try:
        return _STATUS_BY_NUMBER[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(f"status must be ACTIVE or SUSPENDED when set, got {value}") from None


def tenant(value: Tenant) -> types_pb2.Tenant:
    message = types_pb2.Tenant(
        id=value.id,
        name=value.name,
        plan=value.plan,
        status=TENANT_STATUSES[value.status],
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
        external_id=value.external_id or "",
        stripe_customer_id=value.stripe_customer_id or "",
        suspended_reason=value.suspended_reason or "",
        overrides=json.dumps(value.overrides.document, sort_keys=True) if value.overrides else "",
    )
    return message


def api_key(value: ApiKey) -> types_pb2.ApiKey:
    message = types_pb2.ApiKey(
        id=value.id,
        tenant_id=value.tenant_id,
        name=value.name,
        prefix=value.prefix,
        created_at=timestamp(value.created_at),
    )
    if value.revoked_at is not None:
        message.revoked_at.CopyFrom(timestamp(value.revoked_at))
    return message


def plans_response(registry: PlanRegistry) -> admin_pb2.ListPlansResponse:
    catalog = registry.current
    return admin_pb2.ListPlansResponse(
        plans=[plan(catalog.plans[name]) for name in catalog.names()],
        source=catalog.source,
        loaded_at=timestamp(registry.loaded_at),
        version=catalog.version,
    )


def plan(value: Plan) -> admin_pb2.Plan:
    return admin_pb2.Plan(
        name=value.name,
        currency=value.currency,
        base_fee=str(value.base_fee),
        metrics=[
            plan_metric(value.metrics[name], value.currency) for name in sorted(value.metrics)
        ],
        spend_cap="" if value.spend_cap is None else str(value.spend_cap),
    )


def plan_metric(value: MetricPlan, currency: str) -> admin_pb2.PlanMetric:
    return admin_pb2.PlanMetric(
        metric=value.metric,
        charge_model=value.charge.model if value.charge is not None else "",
        included=value.included,
        limits=[
            admin_pb2.PlanLimit(
                window=WINDOWS[limit.window.value],
                limit=limit.limit,
                overage_policy=OVERAGE_POLICIES[limit.overage.value],
                shadow=limit.shadow,
            )
            for limit in value.limits
        ],
        price=metric_price(value, currency),
    )


USAGE_BUCKETS: dict[int, Window] = {
    admin_pb2.USAGE_BUCKET_UNSPECIFIED: Window.HOUR,
    admin_pb2.USAGE_BUCKET_HOUR: Window.HOUR,
    admin_pb2.USAGE_BUCKET_DAY: Window.DAY,
    admin_pb2.USAGE_BUCKET_MONTH: Window.MONTH,
}


def usage_bucket(value: int) -> Window:
    try:
        return USAGE_BUCKETS[value]
    except KeyError:
        raise InvalidArgument(f"bucket must be HOUR, DAY or MONTH, got {value}") from None


def optional_time(message: Timestamp, present: bool, field_name: str) -> datetime | None:
    """An aware UTC datetime for a set Timestamp field, None for an unset one."""
    if not present:
        return None
    try:
        return message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{field_name} is not a valid timestamp") from None


def usage_response(report: UsageReport) -> admin_pb2.GetUsageResponse:
    return admin_pb2.GetUsageResponse(
        tenant_id=report.tenant_id,
        metric=report.metric,
        buckets=[
            admin_pb2.UsageBucketTotal(
                start=timestamp(b.start), end=timestamp(b.end), quantity=b.quantity
            )
            for b in report.buckets
        ],
        total=report.total,
        unflushed=report.unflushed,
        shadow_denials=[
            admin_pb2.ShadowDenials(limit=name, count=count)
            for name, count in report.shadow_denials
        ],
        not_yet_billed=report.not_yet_billed,
    )
