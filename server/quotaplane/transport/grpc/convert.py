"""Protobuf <-> domain values for QuotaService; the only place that knows both shapes."""

from __future__ import annotations

import calendar
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from quotaplane.domain.quota.decisions import Decision, DecisionCode, LimitState, QuotaRequest
from quotaplane_client.v1 import quota_pb2, types_pb2

WINDOWS: dict[str, types_pb2.Window.ValueType] = {
    "second": types_pb2.WINDOW_SECOND,
    "minute": types_pb2.WINDOW_MINUTE,
    "hour": types_pb2.WINDOW_HOUR,
    "day": types_pb2.WINDOW_DAY,
    "month": types_pb2.WINDOW_MONTH,
}
OVERAGE_POLICIES: dict[str, types_pb2.OveragePolicy.ValueType] = {
    "block": types_pb2.OVERAGE_POLICY_BLOCK,
    "bill": types_pb2.OVERAGE_POLICY_BILL,
}
CODES: dict[DecisionCode, quota_pb2.CheckQuotaResponse.Code.ValueType] = {
    DecisionCode.OK: quota_pb2.CheckQuotaResponse.OK,
    DecisionCode.OVER_LIMIT: quota_pb2.CheckQuotaResponse.OVER_LIMIT,
    DecisionCode.SUSPENDED: quota_pb2.CheckQuotaResponse.SUSPENDED,
    DecisionCode.SPEND_CAP: quota_pb2.CheckQuotaResponse.SPEND_CAP,
}


def quota_request(message: quota_pb2.CheckQuotaRequest) -> QuotaRequest:
    """Validate a CheckQuotaRequest; InvalidArgument names the first bad field."""
    return QuotaRequest.parse(
        tenant_id=message.tenant_id,
        metric=message.metric,
        cost=message.cost,
        request_id=message.request_id,
        dry_run=message.dry_run,
        labels=dict(message.labels),
    )


def check_quota_response(decision: Decision) -> quota_pb2.CheckQuotaResponse:
    """The response, filled in place (the hot path: about half the CPU of nested keyword
    constructors, which copy each sub-message into its parent)."""
    response = quota_pb2.CheckQuotaResponse(
        allowed=decision.allowed,
        code=CODES[decision.code],
        replayed=decision.replayed,
        cost=decision.cost,
        overage=decision.overage,
        reason="" if decision.allowed else decision.code.value,
    )
    if decision.shadow_denied:
        response.shadow_denied.extend(decision.shadow_denied)
    if decision.spend_cap is not None:
        response.spend_cap = str(decision.spend_cap)
        response.spend_total = str(decision.spend_total)
    for state in decision.limits:
        fill_limit_status(response.limits.add(), state)
    if decision.retry_after is not None:
        response.retry_after.FromTimedelta(decision.retry_after)
    return response


def fill_limit_status(status: types_pb2.LimitStatus, state: LimitState) -> None:
    status.name = state.name
    status.window = WINDOWS[state.window]
    status.limit = state.limit
    status.remaining = state.remaining
    set_timestamp(status.reset_at, state.reset_at)
    status.overage_policy = OVERAGE_POLICIES[state.overage_policy]
    status.overage = state.overage
    status.shadow = state.shadow


def set_timestamp(message: Timestamp, at: datetime) -> None:
    """Set ``message`` to ``at`` (naive = UTC, as FromDatetime; which costs ~8 us, this ~1 us)."""
    message.seconds = calendar.timegm(at.utctimetuple())
    message.nanos = at.microsecond * 1000


def timestamp(at: datetime) -> Timestamp:
    message = Timestamp()
    set_timestamp(message, at)
    return message
