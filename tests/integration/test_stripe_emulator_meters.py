"""The Stripe emulator's Billing Meters, driven by the real `stripe` SDK (``v1.billing``).

Pins what the meter reporter and ``billing reconcile`` rely on: meters and their list,
meter events with identifier dedup within 24 h, Stripe's 35-day / 5-minute timestamp
window, summaries per customer and window, 429 injection and a dropped response that was
committed all the same.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from tests.fakes import StripeEmulator

pytestmark = pytest.mark.timeout(30)

API_VERSION = "2026-10-28.endive"
EVENT = "openclaw_requests"
HOUR = 3600


@pytest.fixture
def client(emulator: StripeEmulator) -> stripe.StripeClient:
    return stripe.StripeClient(
        emulator.api_key,
        base_addresses={"api": emulator.api_base},
        stripe_version=API_VERSION,
        max_network_retries=0,
    )


@pytest.fixture
def meter_id(client: stripe.StripeClient) -> str:
    params: Any = {
        "display_name": "OpenClaw requests",
        "event_name": EVENT,
        "default_aggregation": {"formula": "sum"},
    }
    return str(client.v1.billing.meters.create(params=params).id)


@pytest.fixture
def customer(client: stripe.StripeClient) -> str:
    return str(client.v1.customers.create(params={"name": "Acme"}).id)


def send(
    client: stripe.StripeClient, customer: str, value: int, identifier: str, at: int | None = None
) -> stripe.billing.MeterEvent:
    params: Any = {
        "event_name": EVENT,
        "payload": {"stripe_customer_id": customer, "value": str(value)},
        "identifier": identifier,
    }
    if at is not None:
        params["timestamp"] = at
    return client.v1.billing.meter_events.create(params=params)


def total(client: stripe.StripeClient, meter: str, customer: str, start: int, end: int) -> Any:
    params: Any = {"customer": customer, "start_time": start, "end_time": end}
    page = client.v1.billing.meters.event_summaries.list(meter, params=params)
    return [s.aggregated_value for s in page.data]


def hour_start() -> int:
    return int(time.time()) // HOUR * HOUR


def test_meter_has_stripe_shape_and_is_listed(client: stripe.StripeClient, meter_id: str) -> None:
    meter = client.v1.billing.meters.retrieve(meter_id)
    assert (meter.object, meter.event_name, meter.status) == ("billing.meter", EVENT, "active")
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    assert meter.value_settings.event_payload_key == "value"
    listed = client.v1.billing.meters.list()
    assert [m.id for m in listed.data] == [meter_id]


def test_a_second_active_meter_for_one_event_name_is_refused(
    client: stripe.StripeClient, meter_id: str
) -> None:
    params: Any = {
        "display_name": "x",
        "event_name": EVENT,
        "default_aggregation": {"formula": "sum"},
    }
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meters.create(params=params)


def test_events_sum_per_customer_and_window(
    client: stripe.StripeClient, meter_id: str, customer: str
) -> None:
    other = str(client.v1.customers.create(params={"name": "Other"}).id)
    start = hour_start() - HOUR
    send(client, customer, 5, "a", at=start + 10)
    send(client, customer, 7, "b", at=start + HOUR + 1)
    send(client, other, 100, "c", at=start + 20)
    assert total(client, meter_id, customer, start, start + 2 * HOUR) == [12]
    assert total(client, meter_id, other, start, start + 2 * HOUR) == [100]
    params: Any = {
        "customer": customer,
        "start_time": start,
        "end_time": start + 2 * HOUR,
        "value_grouping_window": "hour",
    }
    hourly = client.v1.billing.meters.event_summaries.list(meter_id, params=params)
    assert [(s.start_time, s.aggregated_value) for s in hourly.data] == [
        (start, 5),
        (start + HOUR, 7),
    ]


def test_an_identifier_is_counted_once_within_24_hours(
    emulator: StripeEmulator, client: stripe.StripeClient, meter_id: str, customer: str
) -> None:
    start = hour_start()
    send(client, customer, 5, "same", at=start)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        send(client, customer, 5, "same", at=start)
    assert refused.value.code == "resource_already_exists"
    assert total(client, meter_id, customer, start, start + HOUR) == [5]
    emulator.advance_clock(24 * HOUR + 1)
    send(client, customer, 5, "same", at=int(time.time()) + 24 * HOUR)
    window = (start, start + 26 * HOUR)
    assert total(client, meter_id, customer, *window) == [10]  # Stripe forgot it


@pytest.mark.parametrize("offset", [-(35 * 86400 + 60), 600])
def test_timestamps_outside_stripes_window_are_refused(
    client: stripe.StripeClient, meter_id: str, customer: str, offset: int
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        send(client, customer, 1, "t", at=int(time.time()) + offset)
    assert refused.value.param == "timestamp"
    assert not total(client, meter_id, customer, hour_start() - 36 * 86400, hour_start() + HOUR)[0]


def test_429_runs_nothing_and_a_dropped_response_was_counted(
    emulator: StripeEmulator, client: stripe.StripeClient, meter_id: str, customer: str
) -> None:
    start = hour_start()
    emulator.fail_next(1, 429, path_prefix="/v1/billing/meter_events", retry_after=2)
    with pytest.raises(stripe.RateLimitError) as limited:
        send(client, customer, 3, "r", at=start)
    assert (limited.value.headers or {}).get("Retry-After") == "2"
    assert total(client, meter_id, customer, start, start + HOUR) == [0]
    emulator.drop_response_after_commit_next(path_prefix="/v1/billing/meter_events")
    with pytest.raises(stripe.APIConnectionError):
        send(client, customer, 3, "r", at=start)
    assert total(client, meter_id, customer, start, start + HOUR) == [3]
    with pytest.raises(stripe.InvalidRequestError):  # the retry is refused as a duplicate
        send(client, customer, 3, "r", at=start)
    assert total(client, meter_id, customer, start, start + HOUR) == [3]
    assert [e.identifier for e in emulator.meter_events] == ["r"]


def test_summaries_need_minute_aligned_windows(
    client: stripe.StripeClient, meter_id: str, customer: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        total(client, meter_id, customer, hour_start() + 1, hour_start() + HOUR)
