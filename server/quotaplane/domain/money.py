"""Money: currencies, strict parsing, THE rounding rule, minor units and display.

Every amount is a ``decimal.Decimal``; no float ever touches money. Parsing accepts
only ``int`` or a plain decimal string (``"0.05"``, ``"12"``), never a float,
an exponent, NaN or infinity, so what the operator wrote is exactly what is billed.

The one rounding rule: an amount is rounded ``ROUND_HALF_UP`` to the minor unit of
its currency (2 places for USD, 0 for JPY, 3 for KWD), by :func:`round_money`, and
that happens once per invoice line (see ``pricing.py``). Everything before that
(unit prices with up to 6 places, tier sums, proration) is computed exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from types import MappingProxyType

from quotaplane.domain.errors import InvalidArgument, shown

# ISO 4217 code -> number of decimal places of the minor unit.
CURRENCY_MINOR_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "USD": 2,
        "EUR": 2,
        "GBP": 2,
        "CHF": 2,
        "CAD": 2,
        "AUD": 2,
        "NZD": 2,
        "SEK": 2,
        "NOK": 2,
        "DKK": 2,
        "PLN": 2,
        "CZK": 2,
        "INR": 2,
        "BRL": 2,
        "MXN": 2,
        "SGD": 2,
        "HKD": 2,
        "CNY": 2,
        "ZAR": 2,
        "JPY": 0,
        "KRW": 0,
        "KWD": 3,
        "BHD": 3,
        "JOD": 3,
        "OMR": 3,
    }
)

# Largest integer part a parsed amount may have (a quadrillion): keeps every product of a
# price and a usage quantity exact in the 80-digit context below.
MAX_INTEGER_DIGITS = 15

# Wide enough that sums and products of parsed amounts and quantities never round.
MONEY_CONTEXT = Context(
    prec=80, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow]
)

_DECIMAL_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")


def minor_units(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit; InvalidArgument for an unknown code."""
    try:
        return CURRENCY_MINOR_UNITS[currency]
    except KeyError:
        known = ", ".join(sorted(CURRENCY_MINOR_UNITS))
        raise InvalidArgument(f"unknown currency {shown(currency)}; known: {known}") from None


def parse_money(value: str | int, *, max_places: int, allow_negative: bool = False) -> Decimal:
    """Parse an exact amount from an int or a plain decimal string.

    Rejects floats and bools (by type), exponents, NaN, infinity, signs other than a
    leading ``-`` (and that only with ``allow_negative``), more than ``max_places``
    decimal places and more than ``MAX_INTEGER_DIGITS`` integer digits.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgument(
            f"must be a decimal string or an integer, got {type(value).__name__} {value!r}"
        )
    text = str(value)
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"{text[:40]!r} is not a plain decimal number like 12.34")
    sign, integer, fraction = match.groups()
    if sign and not allow_negative:
        raise InvalidArgument("must not be negative")
    if len(integer.lstrip("0")) > MAX_INTEGER_DIGITS:
        raise InvalidArgument(f"must have at most {MAX_INTEGER_DIGITS} integer digits")
    if fraction is not None and len(fraction) > max_places:
        raise InvalidArgument(
            f"{text} has {len(fraction)} decimal places; at most {max_places} allowed"
        )
    return Decimal(text)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """THE rounding rule: ROUND_HALF_UP to the currency's minor unit."""
    _require_finite(amount)
    quantum = Decimal(1).scaleb(-minor_units(currency))
    with localcontext(MONEY_CONTEXT):
        return amount.quantize(quantum, rounding=ROUND_HALF_UP)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Integer minor units (cents) of an amount that is already rounded to the currency."""
    rounded = round_money(amount, currency)
    if rounded != amount:
        raise InvalidArgument(
            f"{amount} {currency} is not rounded to {minor_units(currency)} decimal places"
        )
    with localcontext(MONEY_CONTEXT):
        return int(rounded.scaleb(minor_units(currency)))


def decimal_str(value: Decimal) -> str:
    """Plain notation without exponent (``1E+3`` -> ``1000``), keeping trailing zeros."""
    _require_finite(value)
    return format(value, "f")


def format_money(amount: Decimal, currency: str) -> str:
    """Human display, ``1,234.50 USD``: at least the minor unit's places, never rounded.

    A unit price finer than the minor unit keeps its places (``0.0005 USD``), so the
    display never hides part of a price.
    """
    _require_finite(amount)
    places = max(minor_units(currency), decimal_places(amount))
    return f"{amount:,.{places}f} {currency}"


def decimal_places(value: Decimal) -> int:
    """How many digits ``value`` carries after the point (``Decimal("1.50")`` -> 2)."""
    _require_finite(value)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite values have an int exponent
    return max(0, -exponent)


def _require_finite(amount: Decimal) -> None:
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidArgument(f"amount must be a finite Decimal, got {amount!r}")
