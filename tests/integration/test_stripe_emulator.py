"""The Stripe emulator, driven by the real `stripe` SDK (v16, `StripeClient`) over HTTP.

These tests pin the behaviours the exactly-once billing tests rely on: Stripe's object and
error shapes, invoice totals and states, idempotency-key replay and conflicts, and what the
SDK does with injected faults (its retries sleep 0.5-1 s each, so retries are kept few).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import stripe

from tests.fakes import StripeEmulator, event_payload, sign_webhook

pytestmark = pytest.mark.timeout(30)

API_VERSION = "2026-10-28.endive"  # pinned, as quotaplane's payments adapter pins one


def make_client(
    emu: StripeEmulator, retries: int = 0, api_key: str | None = None
) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key or emu.api_key,
        base_addresses={"api": emu.api_base},
        stripe_version=API_VERSION,
        max_network_retries=retries,
    )


@pytest.fixture
def client(emulator: StripeEmulator) -> stripe.StripeClient:
    return make_client(emulator)


@pytest.fixture
def customer_id(client: stripe.StripeClient) -> str:
    customer = client.v1.customers.create(
        params={"name": "Acme", "email": "billing@acme.test", "metadata": {"tenant_id": "t-1"}}
    )
    return str(customer.id)


@pytest.fixture
def draft_id(client: stripe.StripeClient, customer_id: str) -> str:
    invoice = client.v1.invoices.create(
        params={
            "customer": customer_id,
            "currency": "usd",
            "auto_advance": False,
            "collection_method": "charge_automatically",
            "pending_invoice_items_behavior": "exclude",
            "description": "quotaplane 2026-11",
            "metadata": {"period": "2026-11"},
        }
    )
    return str(invoice.id)


def add_item(
    client: stripe.StripeClient, invoice_id: str, key: str | None = None, **params: object
) -> stripe.InvoiceItem:
    options: stripe.RequestOptions = {"idempotency_key": key} if key else {}
    # Plain dicts on purpose: the wire format, not the SDK's TypedDicts, is under test.
    body: Any = {"invoice": invoice_id, **params}
    return client.v1.invoice_items.create(params=body, options=options)


# -- objects and wire format ------------------------------------------------------------


def test_customer_round_trips_with_stripe_shape(
    client: stripe.StripeClient, customer_id: str
) -> None:
    customer = client.v1.customers.retrieve(customer_id)
    assert (customer.object, customer.name, customer.email, customer.livemode) == (
        "customer",
        "Acme",
        "billing@acme.test",
        False,
    )
    assert customer.metadata is not None
    assert customer.metadata.to_dict() == {"tenant_id": "t-1"}
    assert customer.id.startswith("cus_") and isinstance(customer.created, int)


def test_draft_invoice_totals_follow_its_items(client: stripe.StripeClient, draft_id: str) -> None:
    add_item(client, draft_id, amount=52, description="growth: 13 packages")
    # 5 x 0.5 cent = 2.5 -> rounded half up (not half even) to 3 minor units
    add_item(client, draft_id, quantity=5, unit_amount_decimal="0.5", metadata={"line": "2"})
    invoice = client.v1.invoices.retrieve(draft_id)
    assert (invoice.status, invoice.subtotal, invoice.total, invoice.amount_due) == (
        "draft",
        55,
        55,
        55,
    )
    assert [line.amount for line in invoice.lines.data] == [52, 3]


def test_finalize_opens_numbers_and_freezes_the_invoice(
    client: stripe.StripeClient, draft_id: str
) -> None:
    add_item(client, draft_id, amount=52)
    invoice = client.v1.invoices.finalize_invoice(draft_id)
    assert invoice.status == "open"
    assert invoice.number and invoice.number.endswith("-0001")
    assert (invoice.total, invoice.amount_due, invoice.amount_remaining) == (52, 52, 52)
    assert invoice.status_transitions.finalized_at is not None


def test_finalized_invoice_refuses_new_items(
    client: stripe.StripeClient, emulator: StripeEmulator, draft_id: str
) -> None:
    add_item(client, draft_id, amount=52)
    client.v1.invoices.finalize_invoice(draft_id)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        add_item(client, draft_id, amount=1)
    assert (refused.value.http_status, refused.value.code) == (400, "invoice_not_editable")
    assert emulator.invoice(draft_id)["total"] == 52
    assert len(emulator.invoice_items_for(draft_id)) == 1


def test_exclude_leaves_pending_items_off_the_invoice(
    client: stripe.StripeClient, customer_id: str
) -> None:
    pending = client.v1.invoice_items.create(
        params={"customer": customer_id, "currency": "usd", "amount": 999}
    )
    invoice = client.v1.invoices.create(
        params={"customer": customer_id, "pending_invoice_items_behavior": "exclude"}
    )
    assert invoice.total == 0
    assert client.v1.invoice_items.retrieve(pending.id).invoice is None


def test_pay_marks_an_open_invoice_paid(client: stripe.StripeClient, draft_id: str) -> None:
    add_item(client, draft_id, amount=52)
    client.v1.invoices.finalize_invoice(draft_id)
    invoice = client.v1.invoices.pay(draft_id)
    assert (invoice.status, invoice.amount_paid, invoice.amount_remaining) == ("paid", 52, 0)


def test_void_refuses_a_paid_invoice(client: stripe.StripeClient, draft_id: str) -> None:
    add_item(client, draft_id, amount=52)
    client.v1.invoices.finalize_invoice(draft_id)
    client.v1.invoices.pay(draft_id)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.void_invoice(draft_id)
    assert refused.value.http_status == 400


def test_void_voids_an_open_invoice(client: stripe.StripeClient, draft_id: str) -> None:
    add_item(client, draft_id, amount=52)
    client.v1.invoices.finalize_invoice(draft_id)
    assert client.v1.invoices.void_invoice(draft_id).status == "void"


def test_finalizing_a_zero_invoice_marks_it_paid(
    client: stripe.StripeClient, draft_id: str
) -> None:
    assert client.v1.invoices.finalize_invoice(draft_id).status == "paid"


def test_deleting_a_draft_item_recomputes_the_total(
    client: stripe.StripeClient, draft_id: str
) -> None:
    add_item(client, draft_id, amount=52)
    extra = add_item(client, draft_id, amount=8)
    deleted = client.v1.invoice_items.delete(extra.id)
    assert deleted.deleted is True
    assert client.v1.invoices.retrieve(draft_id).total == 52


def test_items_list_by_invoice_pages_through_all(
    client: stripe.StripeClient, draft_id: str
) -> None:
    created = [add_item(client, draft_id, amount=n).id for n in (1, 2, 3)]
    listed = client.v1.invoice_items.list(params={"invoice": draft_id, "limit": 2})
    assert listed.has_more is True
    assert sorted(item.id for item in listed.auto_paging_iter()) == sorted(created)


def test_expand_embeds_the_customer(
    client: stripe.StripeClient, draft_id: str, customer_id: str
) -> None:
    invoice = client.v1.invoices.retrieve(draft_id, params={"expand": ["customer"]})
    assert isinstance(invoice.customer, stripe.Customer)
    assert (invoice.customer.object, invoice.customer.id) == ("customer", customer_id)


def test_unknown_parameter_is_refused(client: stripe.StripeClient, customer_id: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        body: Any = {"customer": customer_id, "no_such_field": "x"}
        client.v1.invoices.create(params=body)
    assert (refused.value.http_status, refused.value.param) == (400, "no_such_field")


def test_missing_object_is_a_404_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.retrieve("in_doesnotexist")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


def test_non_test_key_is_refused_with_401(emulator: StripeEmulator) -> None:
    with pytest.raises(stripe.AuthenticationError) as refused:
        make_client(emulator, api_key="sk_live_nope").v1.customers.list()
    assert refused.value.http_status == 401
    assert refused.value.error is not None
    assert refused.value.error.type == "invalid_request_error"


def test_each_request_records_the_pinned_api_version(
    client: stripe.StripeClient, emulator: StripeEmulator
) -> None:
    client.v1.customers.list()
    assert [r.stripe_version for r in emulator.requests] == [API_VERSION]


# -- idempotency ------------------------------------------------------------------------


def test_same_key_replays_the_first_response(
    client: stripe.StripeClient, emulator: StripeEmulator, draft_id: str
) -> None:
    first = add_item(client, draft_id, key="ledger-line-1", amount=52)
    again = add_item(client, draft_id, key="ledger-line-1", amount=52)
    assert again.id == first.id
    assert again.last_response is not None and first.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.body == first.last_response.body
    assert len(emulator.invoice_items_for(draft_id)) == 1


def test_same_key_with_other_parameters_is_an_idempotency_error(
    client: stripe.StripeClient, emulator: StripeEmulator, draft_id: str
) -> None:
    add_item(client, draft_id, key="ledger-line-1", amount=52)
    with pytest.raises(stripe.IdempotencyError) as conflict:
        add_item(client, draft_id, key="ledger-line-1", amount=53)
    assert conflict.value.http_status == 400
    assert emulator.invoice(draft_id)["total"] == 52


def test_keys_are_scoped_per_api_key(emulator: StripeEmulator) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "same-key"}
    one = make_client(emulator).v1.customers.create(params={"name": "A"}, options=options)
    two = make_client(emulator, api_key="sk_test_other").v1.customers.create(
        params={"name": "A"}, options=options
    )
    assert one.id != two.id


def test_key_expires_after_24_hours(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "daily"}
    first = client.v1.customers.create(params={"name": "A"}, options=options)
    emulator.advance_clock(24 * 3600)
    assert client.v1.customers.create(params={"name": "A"}, options=options).id != first.id


def test_validation_failure_stores_nothing_for_the_key(
    client: stripe.StripeClient, customer_id: str
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "fix-and-retry"}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.create(
            params={"customer": customer_id, "amount": 5}, options=options
        )
    item = client.v1.invoice_items.create(
        params={"customer": customer_id, "amount": 5, "currency": "usd"}, options=options
    )
    assert item.amount == 5


def test_concurrent_request_with_a_key_in_flight_gets_409(emulator: StripeEmulator) -> None:
    hold = emulator.hold_next("/v1/customers")
    options: stripe.RequestOptions = {"idempotency_key": "in-flight"}
    first: list[str] = []
    worker = threading.Thread(
        target=lambda: first.append(
            make_client(emulator).v1.customers.create(params={"name": "A"}, options=options).id
        )
    )
    worker.start()
    try:
        assert hold.entered.wait(5)
        with pytest.raises(stripe.APIError) as busy:
            make_client(emulator).v1.customers.create(params={"name": "A"}, options=options)
        assert busy.value.http_status == 409
        assert busy.value.error is not None
        assert busy.value.error.code == "idempotency_key_in_use"
    finally:
        hold.release()
        worker.join(5)
    assert len(first) == 1 and len(emulator.customers) == 1


def test_concurrent_writers_lose_no_update(emulator: StripeEmulator, draft_id: str) -> None:
    def add(n: int) -> None:
        add_item(make_client(emulator), draft_id, key=f"line-{n}", amount=n)

    workers = [threading.Thread(target=add, args=(n,)) for n in range(1, 9)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert emulator.invoice(draft_id)["total"] == sum(range(1, 9))


# -- fault injection and the SDK's retries ----------------------------------------------


def test_sdk_does_not_retry_a_plain_429(emulator: StripeEmulator) -> None:
    emulator.fail_next(1, status=429, retry_after=1)
    with pytest.raises(stripe.RateLimitError) as limited:
        make_client(emulator, retries=2).v1.customers.create(params={"name": "A"})
    assert limited.value.headers is not None
    assert limited.value.headers["Retry-After"] == "1"
    assert len(emulator.requests) == 1 and emulator.customers == []


def test_sdk_retries_a_429_marked_should_retry(emulator: StripeEmulator) -> None:
    emulator.fail_next(1, status=429, should_retry=True, path_prefix="/v1/customers")
    customer = make_client(emulator, retries=2).v1.customers.create(params={"name": "A"})
    assert [(r.status, r.injected) for r in emulator.requests] == [(429, True), (200, False)]
    assert [c["id"] for c in emulator.customers] == [customer.id]


@pytest.mark.parametrize("status", [500, 503])
def test_sdk_retries_server_errors_with_the_same_key(emulator: StripeEmulator, status: int) -> None:
    emulator.fail_next(1, status=status)
    make_client(emulator, retries=2).v1.customers.create(params={"name": "A"})
    keys = [r.idempotency_key for r in emulator.requests]
    assert [r.status for r in emulator.requests] == [status, 200]
    assert keys[0] is not None and keys[0] == keys[1]


def test_injected_402_is_a_card_error(
    client: stripe.StripeClient, emulator: StripeEmulator, draft_id: str
) -> None:
    add_item(client, draft_id, amount=52)
    client.v1.invoices.finalize_invoice(draft_id)
    emulator.fail_next(1, status=402, path_prefix=f"/v1/invoices/{draft_id}/pay")
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(draft_id)
    assert emulator.invoice(draft_id)["status"] == "open"


def test_dropped_response_is_replayed_to_the_sdk_retry(
    emulator: StripeEmulator, draft_id: str
) -> None:
    emulator.drop_response_after_commit_next(1, path_prefix="/v1/invoiceitems")
    item = add_item(make_client(emulator, retries=2), draft_id, key="ledger-line-7", amount=52)
    attempts = [(r.dropped, r.replayed) for r in emulator.requests if r.path == "/v1/invoiceitems"]
    assert attempts == [(True, False), (False, True)]
    assert [i["id"] for i in emulator.invoice_items_for(draft_id)] == [item.id]


def test_dropped_response_without_retry_still_committed(
    emulator: StripeEmulator, draft_id: str
) -> None:
    emulator.drop_response_after_commit_next(1)
    with pytest.raises(stripe.APIConnectionError):
        add_item(make_client(emulator, retries=0), draft_id, key="ledger-line-8", amount=52)
    assert emulator.invoice(draft_id)["total"] == 52


# -- webhooks and lifecycle -------------------------------------------------------------


def test_signed_webhook_verifies_with_the_sdk() -> None:
    payload = event_payload("invoice.paid", {"id": "in_123", "object": "invoice"})
    header = sign_webhook(payload, "whsec_test", int(time.time()))
    event = stripe.Webhook.construct_event(payload, header, "whsec_test")
    assert (event.type, event.data.object.id) == ("invoice.paid", "in_123")


def test_webhook_signed_with_another_secret_is_rejected() -> None:
    payload = event_payload("invoice.paid", {"id": "in_123", "object": "invoice"})
    header = sign_webhook(payload, "whsec_other", int(time.time()))
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_test")


def test_stopped_emulator_answers_nothing() -> None:
    emu = StripeEmulator()
    client = make_client(emu.__enter__())
    try:
        client.v1.customers.list()  # opens a keep-alive connection
    finally:
        emu.stop()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.list()
