"""The v1 endpoints the emulator serves: (method, path pattern) -> handler over the Store.

A handler gets the store (lock held), the decoded parameters and the path's id, and returns
the JSON object to answer with status 200. Errors are raised as `wire.StripeError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .shapes import line_item, page, public
from .store import Store
from .wire import JSON, check_params, expand_fields, opt_bool, opt_str

Handler = Callable[[Store, JSON, str], JSON]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def _expanded(fields: frozenset[str]) -> Callable[[Handler], Handler]:
    """Wrap a handler so `expand[]` is validated before it runs and applied to its result."""

    def wrap(handler: Handler) -> Handler:
        def run(store: Store, params: JSON, object_id: str) -> JSON:
            wanted = expand_fields(params, fields)
            return expand(store, handler(store, params, object_id), wanted)

        return run

    return wrap


def expand(store: Store, obj: JSON, fields: list[str]) -> JSON:
    """Replace each named top-level id field by the object it refers to."""
    result = dict(obj)
    for name in fields:
        value: Any = result.get(name)
        found = store.find(value) if isinstance(value, str) else None
        if found is not None and found["object"] == "invoice":
            result[name] = store.render_invoice(found)
        elif found is not None:
            result[name] = public(found)
    return result


_NONE: frozenset[str] = frozenset()
_CUSTOMER = frozenset({"customer"})
_ITEM = frozenset({"customer", "invoice"})


@_expanded(_NONE)
def create_customer(store: Store, params: JSON, _id: str) -> JSON:
    return public(store.create_customer(params))


@_expanded(_NONE)
def retrieve_customer(store: Store, params: JSON, object_id: str) -> JSON:
    check_params(params, set())
    return public(store.get(store.customers, "customer", object_id))


def list_customers(store: Store, params: JSON, _id: str) -> JSON:
    check_params(params, {"email", "limit", "starting_after"})
    email = opt_str(params, "email")
    rows = [c for c in reversed(store.customers.values()) if email in (None, c["email"])]
    return page(rows, "/v1/customers", params)


@_expanded(_CUSTOMER)
def create_invoice(store: Store, params: JSON, _id: str) -> JSON:
    return store.render_invoice(store.create_invoice(params))


@_expanded(_CUSTOMER)
def retrieve_invoice(store: Store, params: JSON, object_id: str) -> JSON:
    check_params(params, set())
    return store.render_invoice(store.get(store.invoices, "invoice", object_id))


def list_invoices(store: Store, params: JSON, _id: str) -> JSON:
    check_params(params, {"customer", "status", "limit", "starting_after"})
    customer, status = opt_str(params, "customer"), opt_str(params, "status")
    rows = [
        store.render_invoice(inv)
        for inv in reversed(store.invoices.values())
        if customer in (None, inv["customer"]) and status in (None, inv["status"])
    ]
    return page(rows, "/v1/invoices", params)


def list_invoice_lines(store: Store, params: JSON, object_id: str) -> JSON:
    check_params(params, {"limit", "starting_after"})
    store.get(store.invoices, "invoice", object_id)
    lines = [line_item(item) for item in store.items_of(object_id)]
    return page(lines, f"/v1/invoices/{object_id}/lines", params)


def _invoice_action(action: Callable[[Store, str, JSON], JSON]) -> Handler:
    @_expanded(_CUSTOMER)
    def run(store: Store, params: JSON, object_id: str) -> JSON:
        return store.render_invoice(action(store, object_id, params))

    return run


@_expanded(_ITEM)
def create_invoice_item(store: Store, params: JSON, _id: str) -> JSON:
    return public(store.create_invoice_item(params))


@_expanded(_ITEM)
def retrieve_invoice_item(store: Store, params: JSON, object_id: str) -> JSON:
    check_params(params, set())
    return public(store.get(store.invoice_items, "invoiceitem", object_id))


def delete_invoice_item(store: Store, params: JSON, object_id: str) -> JSON:
    return store.delete_invoice_item(object_id, params)


def list_invoice_items(store: Store, params: JSON, _id: str) -> JSON:
    check_params(params, {"customer", "invoice", "pending", "limit", "starting_after"})
    customer, invoice = opt_str(params, "customer"), opt_str(params, "invoice")
    pending = opt_bool(params, "pending", False) if "pending" in params else None
    rows = [
        item
        for item in reversed(store.invoice_items.values())
        if customer in (None, item["customer"])
        and invoice in (None, item["invoice"])
        and pending in (None, item["invoice"] is None)
    ]
    return page(rows, "/v1/invoiceitems", params)


def create_meter(store: Store, params: JSON, _id: str) -> JSON:
    return store.metering.create_meter(params)


def retrieve_meter(store: Store, params: JSON, object_id: str) -> JSON:
    check_params(params, set())
    return store.metering.get(object_id)


def list_meters(store: Store, params: JSON, _id: str) -> JSON:
    check_params(params, {"status", "limit", "starting_after"})
    status = opt_str(params, "status")
    rows = [m for m in store.metering.meters.values() if status in (None, m["status"])]
    return page(rows, "/v1/billing/meters", params)


def create_meter_event(store: Store, params: JSON, _id: str) -> JSON:
    return store.metering.create_event(params)


def list_meter_event_summaries(store: Store, params: JSON, object_id: str) -> JSON:
    paging = {k: params.pop(k) for k in ("limit", "starting_after") if k in params}
    rows = store.metering.summaries(object_id, params)
    return page(rows, f"/v1/billing/meters/{object_id}/event_summaries", paging)


def _route(method: str, path: str, handler: Handler) -> Route:
    regex = "^" + path.replace("{id}", "(?P<id>[A-Za-z0-9_]+)") + "$"
    return Route(method, re.compile(regex), handler)


ROUTES = (
    _route("POST", "/v1/customers", create_customer),
    _route("GET", "/v1/customers", list_customers),
    _route("GET", "/v1/customers/{id}", retrieve_customer),
    _route("POST", "/v1/invoices", create_invoice),
    _route("GET", "/v1/invoices", list_invoices),
    _route("GET", "/v1/invoices/{id}", retrieve_invoice),
    _route("GET", "/v1/invoices/{id}/lines", list_invoice_lines),
    _route("POST", "/v1/invoices/{id}/finalize", _invoice_action(Store.finalize_invoice)),
    _route("POST", "/v1/invoices/{id}/pay", _invoice_action(Store.pay_invoice)),
    _route("POST", "/v1/invoices/{id}/void", _invoice_action(Store.void_invoice)),
    _route("POST", "/v1/invoiceitems", create_invoice_item),
    _route("GET", "/v1/invoiceitems", list_invoice_items),
    _route("GET", "/v1/invoiceitems/{id}", retrieve_invoice_item),
    _route("DELETE", "/v1/invoiceitems/{id}", delete_invoice_item),
    _route("POST", "/v1/billing/meters", create_meter),
    _route("GET", "/v1/billing/meters", list_meters),
    _route("GET", "/v1/billing/meters/{id}", retrieve_meter),
    _route("POST", "/v1/billing/meter_events", create_meter_event),
    _route("GET", "/v1/billing/meters/{id}/event_summaries", list_meter_event_summaries),
)


def resolve(method: str, path: str) -> tuple[Handler, str] | None:
    """The handler and path id for a request, or None when no endpoint matches."""
    for route in ROUTES:
        match = route.pattern.match(path)
        if route.method == method and match:
            return route.handler, match.groupdict().get("id") or ""
    return None
