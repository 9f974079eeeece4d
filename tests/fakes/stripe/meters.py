"""Billing Meters in the emulated account: meters, meter events and their summaries.

Behaviour as Stripe documents it (docs.stripe.com/api/billing/meter, .../meter-event,
.../meter-event-summary):

- a meter has an ``event_name`` (unique among active meters), an aggregation formula
  (``sum``, ``count`` or ``last``), and the payload keys of the customer (default
  ``stripe_customer_id``) and the value (default ``value``);
- a meter event carries ``event_name``, ``payload`` with those keys, an optional
  ``identifier`` (generated when absent) and ``timestamp`` (default now), which must lie
  within the past 35 days and at most 5 minutes ahead; an ``identifier`` seen in the last
  24 hours is refused (400 ``resource_already_exists``) and the event not counted again;
- an event whose name no meter has is accepted: Stripe validates that asynchronously and
  reports it by a ``v1.billing.meter.no_meter_found`` event, so it counts on no summary;
- summaries aggregate one customer's events in ``[start_time, end_time)`` (minute aligned),
  as one summary or per ``hour``/``day`` with ``value_grouping_window``. The emulator's
  summaries are immediately consistent (Stripe's are eventually consistent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .wire import JSON, ParamError, StripeError, check_params, new_id, opt_enum, opt_int, opt_str

DEDUP_SECONDS = 24 * 3600
MAX_AGE_SECONDS = 35 * 86400
MAX_AHEAD_SECONDS = 300
_FORMULAS = ("sum", "count", "last")
_WINDOWS = {"hour": 3600, "day": 86400}


@dataclass(frozen=True)
class MeterEvent:
    event_name: str
    identifier: str
    customer: str | None
    value: Decimal
    timestamp: int
    created: int


class Meters:
    """Meters and meter events; the caller holds the store's lock."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self.meters: dict[str, JSON] = {}
        self.events: list[MeterEvent] = []
        self._identifiers: dict[str, int] = {}  # identifier -> when it was first seen

    # -- meters --------------------------------------------------------------------------

    def create_meter(self, params: JSON) -> JSON:
        allowed = {"display_name", "event_name", "default_aggregation", "customer_mapping"}
        check_params(
            params,
            allowed | {"value_settings", "event_time_window"},
            frozenset({"display_name", "event_name", "default_aggregation"}),
        )
        event_name = opt_str(params, "event_name") or ""
        if any(m["event_name"] == event_name for m in self.active()):
            raise ParamError(
                f"An active meter with event_name '{event_name}' already exists.",
                param="event_name",
            )
        meter = _meter_object(params, event_name, self._clock())
        self.meters[meter["id"]] = meter
        return meter

    def active(self) -> list[JSON]:
        return [meter for meter in self.meters.values() if meter["status"] == "active"]

    def get(self, meter_id: str) -> JSON:
        meter = self.meters.get(meter_id)
        if meter is None:
            raise StripeError(
                404, f"No such billing meter: '{meter_id}'", code="resource_missing", param="id"
            )
        return meter

    # -- events --------------------------------------------------------------------------

    def create_event(self, params: JSON) -> JSON:
        check_params(
            params, {"event_name", "payload", "identifier", "timestamp"},
            frozenset({"event_name", "payload"}),
        )  # fmt: skip
        now = self._clock()
        event_name = opt_str(params, "event_name") or ""
        payload = params["payload"]
        if not isinstance(payload, dict):
            raise ParamError("Invalid hash", param="payload")
        timestamp = opt_int(params, "timestamp")
        timestamp = now if timestamp is None else timestamp
        _check_timestamp(timestamp, now)
        meter = next((m for m in self.active() if m["event_name"] == event_name), None)
        customer_key = meter["customer_mapping"]["event_payload_key"] if meter else None
        value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
        value = _value(payload.get(value_key), value_key)
        identifier = opt_str(params, "identifier") or new_id("mev")
        self._claim_identifier(identifier, now)
        customer = payload.get(customer_key) if customer_key else None
        event = MeterEvent(event_name, identifier, customer, value, timestamp, now)
        self.events.append(event)
        return {
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": dict(payload),
            "timestamp": timestamp,
        }

    def _claim_identifier(self, identifier: str, now: int) -> None:
        seen = self._identifiers.get(identifier)
        if seen is not None and now - seen < DEDUP_SECONDS:
            raise StripeError(
                400,
                f"An event with identifier '{identifier}' already exists.",
                code="resource_already_exists",
                param="identifier",
            )
        self._identifiers[identifier] = now

    # -- summaries -----------------------------------------------------------------------

    def summaries(self, meter_id: str, params: JSON) -> list[JSON]:
        check_params(
            params,
            {"customer", "start_time", "end_time", "value_grouping_window"},
            frozenset({"customer", "start_time", "end_time"}),
        )
        meter = self.get(meter_id)
        customer = opt_str(params, "customer")
        start, end = opt_int(params, "start_time") or 0, opt_int(params, "end_time") or 0
        if start % 60 or end % 60 or end <= start:
            raise ParamError("start_time and end_time must be minute aligned, start < end")
        window = opt_enum(params, "value_grouping_window", ("hour", "day"), "")
        step = _WINDOWS.get(window, end - start)
        if window and (start % step or end % step):
            raise ParamError(f"start_time and end_time must align with the {window} boundaries")
        return [
            self._summary(meter, customer, low, min(low + step, end))
            for low in range(start, end, step)
        ]

    def _summary(self, meter: JSON, customer: str | None, start: int, end: int) -> JSON:
        events = [
            e
            for e in self.events
            if e.event_name == meter["event_name"]
            and e.customer == customer
            and start <= e.timestamp < end
        ]
        return {
            "id": f"mtrusum_{start}_{end}",  # stable, so a list can page by it
            "object": "billing.meter_event_summary",
            "aggregated_value": _aggregate(meter["default_aggregation"]["formula"], events),
            "end_time": end,
            "livemode": False,
            "meter": meter["id"],
            "start_time": start,
        }


def _meter_object(params: JSON, event_name: str, now: int) -> JSON:
    aggregation = params["default_aggregation"]
    formula = aggregation.get("formula") if isinstance(aggregation, dict) else None
    if formula not in _FORMULAS:
        raise ParamError(
            f"default_aggregation[formula] must be one of {', '.join(_FORMULAS)}",
            param="default_aggregation[formula]",
        )
    customer = params.get("customer_mapping") or {}
    value = params.get("value_settings") or {}
    if not isinstance(customer, dict) or not isinstance(value, dict):
        raise ParamError("Invalid hash", param="customer_mapping")
    return {
        "id": new_id("mtr"),
        "object": "billing.meter",
        "created": now,
        "customer_mapping": {
            "event_payload_key": customer.get("event_payload_key", "stripe_customer_id"),
            "type": customer.get("type", "by_id"),
        },
        "default_aggregation": {"formula": formula},
        "display_name": opt_str(params, "display_name"),
        "event_name": event_name,
        "event_time_window": opt_str(params, "event_time_window"),
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": now,
        "value_settings": {"event_payload_key": value.get("event_payload_key", "value")},
    }


def _check_timestamp(timestamp: int, now: int) -> None:
    if timestamp < now - MAX_AGE_SECONDS:
        raise ParamError(
            "Timestamp must be within the past 35 calendar days.",
            param="timestamp",
            code="timestamp_too_far_in_past",
        )
    if timestamp > now + MAX_AHEAD_SECONDS:
        raise ParamError(
            "Timestamp must not be more than 5 minutes in the future.",
            param="timestamp",
            code="timestamp_in_future",
        )


def _value(raw: object, key: str) -> Decimal:
    if raw is None:
        return Decimal(1)  # a count meter needs no value
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise ParamError(f"payload[{key}] must be a number", param=f"payload[{key}]")
    return value


def _aggregate(formula: str, events: list[MeterEvent]) -> int | float:
    if formula == "count":
        return len(events)
    if formula == "last":
        total = max(events, key=lambda e: (e.timestamp, e.created)).value if events else 0
    else:
        total = sum((e.value for e in events), Decimal(0))
    # JSON numbers, as Stripe renders aggregated_value (whole values stay exact ints).
    return int(total) if total == int(total) else float(total)
