"""Stripe v1 object shapes (customer, invoice, invoiceitem, line_item, list) and item amounts.

Builders return fresh JSON dicts as the API renders them; fields the emulator has no
behaviour for carry Stripe's neutral values (null, [], false) so SDK code that reads them
works. Amounts are integer minor units: `quantity x unit_amount_decimal` is rounded
ROUND_HALF_UP to a whole minor unit, once per item.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal

from .wire import JSON, ParamError, metadata, new_id, opt_bool, opt_decimal, opt_int, opt_str


def customer_object(params: JSON, now: int) -> JSON:
    return {
        "id": new_id("cus"),
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": now,
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": opt_str(params, "description"),
        "discount": None,
        "email": opt_str(params, "email"),
        "invoice_prefix": "".join(secrets.choice(string.ascii_uppercase) for _ in range(8)),
        "invoice_settings": {"custom_fields": None, "default_payment_method": None},
        "livemode": False,
        "metadata": metadata(params),
        "name": opt_str(params, "name"),
        "next_invoice_sequence": 1,
        "phone": opt_str(params, "phone"),
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def invoice_object(params: JSON, customer: JSON, collection: str, now: int) -> JSON:
    return {
        "id": new_id("in"),
        "object": "invoice",
        "account_country": "US",
        "amount_due": 0,
        "amount_paid": 0,
        "amount_remaining": 0,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": opt_bool(params, "auto_advance", False),
        "billing_reason": "manual",
        "collection_method": collection,
        "created": now,
        "currency": (opt_str(params, "currency") or "usd").lower(),
        "customer": customer["id"],
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "days_until_due": opt_int(params, "days_until_due"),
        "description": opt_str(params, "description"),
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "livemode": False,
        "metadata": metadata(params),
        "number": None,
        "parent": None,
        "period_end": now,
        "period_start": now,
        "starting_balance": 0,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "total": 0,
        "total_excluding_tax": 0,
        "total_discount_amounts": [],
        "total_taxes": [],
    }


def invoice_item_object(params: JSON, customer_id: str, currency: str, now: int) -> JSON:
    quantity, unit, amount = item_amounts(params)
    return {
        "id": new_id("ii"),
        "object": "invoiceitem",
        "amount": amount,
        "currency": currency,
        "customer": customer_id,
        "date": now,
        "description": opt_str(params, "description"),
        "discountable": opt_bool(params, "discountable", amount >= 0),
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": metadata(params),
        "parent": None,
        "period": _period(params, now),
        "pricing": {"price_details": None, "type": None, "unit_amount_decimal": str(unit)},
        "proration": False,
        "quantity": quantity,
        "quantity_decimal": str(quantity),
        "tax_rates": [],
        "test_clock": None,
    }


def line_item(item: JSON) -> JSON:
    """The invoice's `lines` entry for an attached invoice item."""
    return {
        "id": item["_line_id"],
        "object": "line_item",
        "amount": item["amount"],
        "currency": item["currency"],
        "description": item["description"],
        "discount_amounts": [],
        "discountable": item["discountable"],
        "discounts": [],
        "invoice": item["invoice"],
        "livemode": False,
        "metadata": dict(item["metadata"]),
        "parent": {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": item["id"],
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
        },
        "period": dict(item["period"]),
        "pricing": dict(item["pricing"]),
        "quantity": item["quantity"],
        "taxes": [],
    }


def public(obj: JSON) -> JSON:
    """The object without the emulator's private bookkeeping fields (`_...`)."""
    return {key: value for key, value in obj.items() if not key.startswith("_")}


def page(rows: Iterable[JSON], url: str, params: JSON) -> JSON:
    """One page of a list in Stripe's cursor style (`limit`, `starting_after`)."""
    rows = list(rows)
    limit = opt_int(params, "limit") or 10
    if not 1 <= limit <= 100:
        raise ParamError("limit must be between 1 and 100", param="limit")
    after = opt_str(params, "starting_after")
    if after is not None:
        ids = [row["id"] for row in rows]
        if after not in ids:
            raise ParamError(f"No such object: '{after}'", param="starting_after")
        rows = rows[ids.index(after) + 1 :]
    return {
        "object": "list",
        "data": [public(row) for row in rows[:limit]],
        "has_more": len(rows) > limit,
        "url": url,
    }


def item_amounts(params: JSON) -> tuple[int, Decimal, int]:
    """(quantity, unit amount, amount) from `amount` or `quantity` x `unit_amount_decimal`."""
    amount = opt_int(params, "amount")
    unit = opt_decimal(params, "unit_amount_decimal")
    quantity = opt_int(params, "quantity")
    if (amount is None) == (unit is None):
        raise ParamError("Pass exactly one of amount or unit_amount_decimal.", param="amount")
    if quantity is not None and quantity < 0:
        raise ParamError("quantity must be non-negative", param="quantity")
    if amount is not None:
        if quantity not in (None, 1):
            raise ParamError("quantity cannot be set together with amount.", param="quantity")
        return 1, Decimal(amount), amount
    assert unit is not None
    exponent = unit.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        raise ParamError(
            "unit_amount_decimal accepts at most 12 decimal places", param="unit_amount_decimal"
        )
    quantity = 1 if quantity is None else quantity
    total = (unit * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return quantity, unit, int(total)


def _period(params: JSON, now: int) -> dict[str, int]:
    raw = params.get("period")
    if raw is None:
        return {"start": now, "end": now}
    if not isinstance(raw, dict):
        raise ParamError("Invalid hash", param="period")
    start, end = opt_int(raw, "start"), opt_int(raw, "end")
    if start is None or end is None or end < start:
        raise ParamError("period needs start <= end", param="period")
    return {"start": start, "end": end}
