"""The emulated Stripe account's state: customers, invoices and invoice items, in memory.

Owns references between objects, invoice totals and the invoice state machine
draft -> open -> paid | void (a draft takes items; a finalized invoice is frozen). Every
method expects the caller to hold `Store.lock`; the HTTP layer takes it around each request,
so one request's reads and writes are atomic. Object shapes live in `shapes`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from . import shapes
from .meters import Meters
from .wire import JSON, ParamError, StripeError, check_params, new_id, opt_bool, opt_enum, opt_str

_INVOICE_PARAMS = {
    "customer", "currency", "auto_advance", "collection_method", "days_until_due",
    "description", "metadata", "pending_invoice_items_behavior",
}  # fmt: skip
_ITEM_PARAMS = {
    "customer", "invoice", "currency", "amount", "quantity", "unit_amount_decimal",
    "description", "metadata", "period", "discountable",
}  # fmt: skip


class Store:
    """In-memory objects of one Stripe account (test mode)."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self.lock = threading.RLock()
        self._clock = clock
        self.customers: dict[str, JSON] = {}
        self.invoices: dict[str, JSON] = {}
        self.invoice_items: dict[str, JSON] = {}
        self.metering = Meters(clock)

    # -- lookups -------------------------------------------------------------------------

    def find(self, object_id: str) -> JSON | None:
        table = {"cus": self.customers, "in": self.invoices, "ii": self.invoice_items}
        return table.get(object_id.split("_", 1)[0], {}).get(object_id)

    def get(self, table: dict[str, JSON], kind: str, object_id: str) -> JSON:
        found = table.get(object_id)
        if found is None:
            raise StripeError(
                404, f"No such {kind}: '{object_id}'", code="resource_missing", param="id"
            )
        return found

    def _referenced(self, table: dict[str, JSON], kind: str, object_id: str, param: str) -> JSON:
        # A dangling reference in the parameters is a validation failure: nothing ran yet.
        found = table.get(object_id)
        if found is None:
            raise ParamError(f"No such {kind}: '{object_id}'", param=param, code="resource_missing")
        return found

    # -- customers -----------------------------------------------------------------------

    def create_customer(self, params: JSON) -> JSON:
        check_params(params, {"name", "email", "description", "phone", "metadata"})
        customer = shapes.customer_object(params, self._clock())
        self.customers[customer["id"]] = customer
        return customer

    # -- invoices ------------------------------------------------------------------------

    def create_invoice(self, params: JSON) -> JSON:
        check_params(params, _INVOICE_PARAMS, frozenset({"customer"}))
        customer_id = opt_str(params, "customer") or ""
        customer = self._referenced(self.customers, "customer", customer_id, "customer")
        collection = opt_enum(
            params, "collection_method", ("charge_automatically", "send_invoice"),
            "charge_automatically",
        )  # fmt: skip
        if (collection == "send_invoice") != ("days_until_due" in params):
            raise ParamError(
                "days_until_due is required with collection_method=send_invoice and "
                "not allowed with charge_automatically",
                param="days_until_due",
            )
        # Since API version 2022-08-01 pending items are excluded unless asked for.
        behavior = opt_enum(
            params, "pending_invoice_items_behavior", ("exclude", "include"), "exclude"
        )
        invoice = shapes.invoice_object(params, customer, collection, self._clock())
        self.invoices[invoice["id"]] = invoice
        if behavior == "include":
            for item in self.pending_items(customer["id"], invoice["currency"]):
                self._attach(item, invoice)
        self._recompute(invoice)
        return invoice

    def finalize_invoice(self, invoice_id: str, params: JSON) -> JSON:
        check_params(params, {"auto_advance"})
        invoice = self.get(self.invoices, "invoice", invoice_id)
        if invoice["status"] != "draft":
            raise StripeError(
                400, "This invoice is already finalized, you can't re-finalize a non-draft "
                "invoice.", code="invoice_not_editable",
            )  # fmt: skip
        customer = self.customers[invoice["customer"]]
        now = self._clock()
        invoice["number"] = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
        customer["next_invoice_sequence"] += 1
        invoice["status"] = "open"
        invoice["effective_at"] = now
        invoice["status_transitions"]["finalized_at"] = now
        if invoice["days_until_due"] is not None:
            invoice["due_date"] = now + 86400 * invoice["days_until_due"]
        if invoice["amount_due"] == 0:
            # Stripe marks a finalized invoice with nothing to collect as paid at once.
            self._mark_paid(invoice)
        return invoice

    def pay_invoice(self, invoice_id: str, params: JSON) -> JSON:
        # No payment methods are emulated: paying an open invoice always succeeds (arm
        # fail_next(status=402) for a decline).
        check_params(params, {"paid_out_of_band"})
        opt_bool(params, "paid_out_of_band", False)
        invoice = self._in_state(invoice_id, "open", "pay")
        self._mark_paid(invoice)
        return invoice

    def void_invoice(self, invoice_id: str, params: JSON) -> JSON:
        check_params(params, set())
        invoice = self._in_state(invoice_id, "open", "void")
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = self._clock()
        return invoice

    def render_invoice(self, invoice: JSON) -> JSON:
        lines = [shapes.line_item(item) for item in self.items_of(invoice["id"])]
        return {**invoice, "lines": shapes.page(lines, f"/v1/invoices/{invoice['id']}/lines", {})}

    def _in_state(self, invoice_id: str, status: str, action: str) -> JSON:
        invoice = self.get(self.invoices, "invoice", invoice_id)
        if invoice["status"] != status:
            # The code is the emulator's own; Stripe's wording for these cases varies.
            raise StripeError(
                400, f"You can only {action} an invoice with status '{status}'; this invoice "
                f"is '{invoice['status']}'.", code="invoice_unexpected_state",
            )  # fmt: skip
        return invoice

    def _mark_paid(self, invoice: JSON) -> None:
        invoice["status"] = "paid"
        invoice["amount_paid"] = invoice["amount_due"]
        invoice["amount_remaining"] = 0
        invoice["status_transitions"]["paid_at"] = self._clock()

    def _recompute(self, invoice: JSON) -> None:
        subtotal = sum(item["amount"] for item in self.items_of(invoice["id"]))
        invoice["subtotal"] = invoice["subtotal_excluding_tax"] = subtotal
        invoice["total"] = invoice["total_excluding_tax"] = subtotal
        # A negative total is credited to the customer's balance; nothing is due.
        invoice["amount_due"] = max(subtotal, 0)
        invoice["amount_remaining"] = invoice["amount_due"] - invoice["amount_paid"]

    # -- invoice items -------------------------------------------------------------------

    def create_invoice_item(self, params: JSON) -> JSON:
        check_params(params, _ITEM_PARAMS)
        invoice = None
        if "invoice" in params:
            invoice_id = opt_str(params, "invoice") or ""
            invoice = self._referenced(self.invoices, "invoice", invoice_id, "invoice")
        customer = self._item_customer(params, invoice)
        item = shapes.invoice_item_object(
            params, customer["id"], self._item_currency(params, invoice), self._clock()
        )
        if invoice is not None and invoice["status"] != "draft":
            raise StripeError(
                400, f"You can only add invoice items to draft invoices; invoice "
                f"{invoice['id']} is '{invoice['status']}'.", code="invoice_not_editable",
                param="invoice",
            )  # fmt: skip
        self.invoice_items[item["id"]] = item
        if invoice is not None:
            self._attach(item, invoice)
            self._recompute(invoice)
        return item

    def _item_customer(self, params: JSON, invoice: JSON | None) -> JSON:
        customer_id = opt_str(params, "customer") or (invoice["customer"] if invoice else None)
        if customer_id is None:
            raise ParamError(
                "Missing required param: customer.", param="customer", code="parameter_missing"
            )
        customer = self._referenced(self.customers, "customer", customer_id, "customer")
        if invoice is not None and invoice["customer"] != customer["id"]:
            raise ParamError("The invoice belongs to another customer.", param="invoice")
        return customer

    def _item_currency(self, params: JSON, invoice: JSON | None) -> str:
        currency = (opt_str(params, "currency") or "").lower()
        if invoice is None:
            if not currency:
                raise ParamError(
                    "Missing required param: currency.", param="currency",
                    code="parameter_missing",
                )  # fmt: skip
            return currency
        if currency and currency != invoice["currency"]:
            raise ParamError(
                f"The currency '{currency}' does not match the invoice currency "
                f"'{invoice['currency']}'.",
                param="currency",
            )
        return str(invoice["currency"])

    def delete_invoice_item(self, item_id: str, params: JSON) -> JSON:
        check_params(params, set())
        item = self.get(self.invoice_items, "invoiceitem", item_id)
        invoice = self.invoices.get(item["invoice"] or "")
        if invoice is not None and invoice["status"] != "draft":
            raise StripeError(
                400, "Invoice items on a finalized invoice cannot be deleted.",
                code="invoice_not_editable",
            )  # fmt: skip
        del self.invoice_items[item_id]
        if invoice is not None:
            self._recompute(invoice)
        return {"id": item_id, "object": "invoiceitem", "deleted": True}

    def _attach(self, item: JSON, invoice: JSON) -> None:
        item["invoice"] = invoice["id"]
        item["_line_id"] = new_id("il")

    def items_of(self, invoice_id: str) -> list[JSON]:
        return [item for item in self.invoice_items.values() if item["invoice"] == invoice_id]

    def pending_items(self, customer_id: str, currency: str) -> list[JSON]:
        return [
            item
            for item in self.invoice_items.values()
            if item["invoice"] is None
            and item["customer"] == customer_id
            and item["currency"] == currency
        ]
