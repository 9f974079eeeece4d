"""Protobuf <-> domain values for the billing RPCs (RecordUsage, GenerateInvoice).

Money leaves as decimal strings in plain notation ("0.52", never "5.2E-1") plus integer
minor units; no float is ever involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from quotaplane.domain.billing.events import EventOutcome, EventResult
from quotaplane.domain.billing.invoicing import InvoiceRequest
from quotaplane.domain.billing.ports import StoredInvoice
from quotaplane.domain.billing.pricing import PricedLine, TierLine
from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.domain.billing.usage_events import RawUsageEvent
from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.money import decimal_str
from quotaplane.transport.grpc.admin_convert import optional_time
from quotaplane_client.v1 import quota_pb2, types_pb2

Outcome = quota_pb2.RecordUsageResponse.Outcome
OUTCOMES: dict[EventOutcome, Outcome.ValueType] = {
    EventOutcome.ACCEPTED: quota_pb2.RecordUsageResponse.ACCEPTED,
    EventOutcome.DUPLICATE: quota_pb2.RecordUsageResponse.DUPLICATE,
    EventOutcome.REJECTED: quota_pb2.RecordUsageResponse.REJECTED,
}
STATUSES: dict[str, types_pb2.Invoice.Status.ValueType] = {
    InvoiceStatus.DRAFT: types_pb2.Invoice.DRAFT,
    InvoiceStatus.FINALIZED: types_pb2.Invoice.FINALIZED,
    InvoiceStatus.PAID: types_pb2.Invoice.PAID,
    InvoiceStatus.VOID: types_pb2.Invoice.VOID,
}


def usage_events(request: quota_pb2.RecordUsageRequest) -> list[RawUsageEvent]:
    return [_usage_event(event) for event in request.events]


def _usage_event(event: quota_pb2.UsageEvent) -> RawUsageEvent:
    at, problem = None, ""
    try:  # an out-of-range timestamp rejects this event only
        at = optional_time(event.timestamp, event.HasField("timestamp"), "timestamp")
    except InvalidArgument as error:
        problem = error.message
    return RawUsageEvent(
        event_id=event.event_id,
        tenant_id=event.tenant_id,
        metric=event.metric,
        quantity=event.quantity,
        timestamp=at,
        problem=problem,
    )


def record_usage_response(results: Sequence[EventResult]) -> quota_pb2.RecordUsageResponse:
    counts = {outcome: 0 for outcome in EventOutcome}
    for result in results:
        counts[result.outcome] += 1
    return quota_pb2.RecordUsageResponse(
        accepted=counts[EventOutcome.ACCEPTED],
        duplicate=counts[EventOutcome.DUPLICATE],
        rejected=counts[EventOutcome.REJECTED],
        results=[
            quota_pb2.RecordUsageResponse.EventResult(
                event_id=result.event_id,
                tenant_id=result.tenant_id,
                outcome=OUTCOMES[result.outcome],
                reason=result.reason,
            )
            for result in results
        ],
    )


def invoice_request(request: quota_pb2.GenerateInvoiceRequest) -> InvoiceRequest:
    return InvoiceRequest(
        tenant_id=request.tenant_id,
        period=request.period,
        finalize=request.finalize,
        force=request.force,
        push_to_stripe=request.push_to_stripe,
    )


def invoice(stored: StoredInvoice) -> types_pb2.Invoice:
    message = types_pb2.Invoice(
        id=stored.id,
        tenant_id=stored.tenant_id,
        period=stored.period,
        status=STATUSES[stored.status],
        currency=stored.currency,
        lines=[invoice_line(line) for line in stored.lines],
        subtotal=decimal_str(stored.subtotal),
        total=decimal_str(stored.total),
        total_minor=stored.total_minor,
        stripe_invoice_id=stored.stripe_invoice_id or "",
        version=stored.version,
        replaces_invoice_id=stored.replaces_invoice_id or "",
        supplements_invoice_id=stored.supplements_invoice_id or "",
        supplement=stored.supplement,
        created_at=_timestamp(stored.created_at),
        last_error=stored.last_error or "",
        plan_version=stored.plan_version,
    )
    if stored.finalized_at is not None:
        message.finalized_at.CopyFrom(_timestamp(stored.finalized_at))
    return message


def invoice_line(line: PricedLine) -> types_pb2.InvoiceLine:
    message = types_pb2.InvoiceLine(
        metric=line.metric,
        description=line.description,
        quantity=line.quantity,
        unit_price="" if line.unit_price is None else decimal_str(line.unit_price),
        amount=decimal_str(line.amount),
        amount_minor=line.amount_minor,
        tiers=[tier_charge(tier) for tier in line.tiers],
        plan=line.plan,
        proration=_proration(line.fraction),
        included=line.included,
        override=line.override,
    )
    if line.span_start is not None:
        message.span_start.CopyFrom(_timestamp(line.span_start))
    if line.span_end is not None:
        message.span_end.CopyFrom(_timestamp(line.span_end))
    return message


def tier_charge(tier: TierLine) -> types_pb2.TierCharge:
    return types_pb2.TierCharge(
        first_unit=tier.first_unit,
        last_unit=tier.last_unit or 0,
        quantity=tier.quantity,
        unit_price=decimal_str(tier.unit_price),
        flat_fee=decimal_str(tier.flat_fee),
        amount=decimal_str(tier.amount),
    )


def _proration(fraction: Decimal) -> str:
    if fraction == 1:
        return "1"
    return decimal_str(fraction.quantize(Decimal("0.000001")))


def _timestamp(at: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(at)
    return message
