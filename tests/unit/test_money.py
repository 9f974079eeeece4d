"""Money: strict parsing, THE rounding rule, minor units, display."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.money import (
    CURRENCY_MINOR_UNITS,
    decimal_str,
    format_money,
    minor_units,
    parse_money,
    round_money,
    to_minor_units,
)


@pytest.mark.parametrize(
    ("currency", "places"),
    [
        *[(code, 2) for code in ("USD", "EUR", "GBP", "CHF", "CAD", "AUD")],
        *[("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3)],
    ],
)
def test_minor_units_of_required_currencies(currency: str, places: int) -> None:
    assert minor_units(currency) == places


def test_unknown_currency_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown currency 'usd'.*USD"):
        minor_units("usd")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.05", Decimal("0.05")), ("12", Decimal(12)), (7, Decimal(7)), ("0.500000", Decimal("0.5"))],
)
def test_parse_money_is_exact(text: str | int, expected: Decimal) -> None:
    assert parse_money(text, max_places=6) == expected


def test_parse_money_keeps_the_written_scale() -> None:
    assert str(parse_money("49.00", max_places=2)) == "49.00"


@pytest.mark.parametrize(
    "bad", ["1e3", "1E-2", "NaN", "nan", "Infinity", "inf", "", " 1", "1.", ".5"]
)
def test_parse_money_rejects_non_plain_decimals(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="plain decimal"):
        parse_money(bad, max_places=6)


@pytest.mark.parametrize("bad", [0.05, True, None, Decimal("0.05")])
def test_parse_money_rejects_floats_and_other_types(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="decimal string or an integer"):
        parse_money(bad, max_places=6)  # type: ignore[arg-type]


def test_parse_money_rejects_too_many_places() -> None:
    with pytest.raises(InvalidArgument, match="18 decimal places; at most 2"):
        parse_money("0.050000000000000003", max_places=2)


def test_parse_money_rejects_negative_by_default() -> None:
    with pytest.raises(InvalidArgument, match=r"^must not be negative$"):
        parse_money("-0.05", max_places=2)


def test_parse_money_allows_negative_when_asked() -> None:
    assert parse_money("-0.05", max_places=2, allow_negative=True) == Decimal("-0.05")


def test_parse_money_rejects_a_plus_sign() -> None:
    with pytest.raises(InvalidArgument):
        parse_money("+1", max_places=2)


def test_parse_money_rejects_absurdly_large_amounts() -> None:
    with pytest.raises(InvalidArgument, match="integer digits"):
        parse_money("1" + "0" * 15, max_places=2)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.005", "USD", "0.01"),  # half goes up
        ("0.0049999", "USD", "0.00"),
        ("2.675", "USD", "2.68"),  # the classic float trap: exact here
        ("-0.005", "USD", "-0.01"),  # half away from zero
        ("0.5", "JPY", "1"),
        ("1.4", "JPY", "1"),
        ("0.0005", "KWD", "0.001"),
        ("12", "USD", "12.00"),
    ],
)
def test_round_money_is_half_up_to_the_minor_unit(
    amount: str, currency: str, expected: str
) -> None:
    assert str(round_money(Decimal(amount), currency)) == expected


def test_round_money_refuses_nan() -> None:
    with pytest.raises(InvalidArgument, match="finite"):
        round_money(Decimal("NaN"), "USD")


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [("0.52", "USD", 52), ("0.5", "USD", 50), ("1234", "JPY", 1234), ("1.234", "KWD", 1234)],
)
def test_to_minor_units(amount: str, currency: str, minor: int) -> None:
    assert to_minor_units(Decimal(amount), currency) == minor


def test_to_minor_units_refuses_unrounded_amounts() -> None:
    with pytest.raises(InvalidArgument, match="not rounded to 2"):
        to_minor_units(Decimal("0.505"), "USD")


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        ("1234.5", "USD", "1,234.50 USD"),
        ("0.0005", "USD", "0.0005 USD"),
        ("1500", "JPY", "1,500 JPY"),
        ("0", "KWD", "0.000 KWD"),
    ],
)
def test_format_money(amount: str, currency: str, shown: str) -> None:
    assert format_money(Decimal(amount), currency) == shown


def test_decimal_str_never_uses_an_exponent() -> None:
    assert decimal_str(Decimal("1E+3")) == "1000"


@given(
    cents=st.integers(min_value=-(10**12), max_value=10**12),
    currency=st.sampled_from(sorted(CURRENCY_MINOR_UNITS)),
)
def test_minor_units_round_trip(cents: int, currency: str) -> None:
    amount = Decimal(cents).scaleb(-minor_units(currency))
    assert to_minor_units(round_money(amount, currency), currency) == cents


@given(
    amount=st.decimals(min_value=-(10**9), max_value=10**9, places=6, allow_nan=False),
    currency=st.sampled_from(sorted(CURRENCY_MINOR_UNITS)),
)
def test_rounding_moves_at_most_half_a_minor_unit(amount: Decimal, currency: str) -> None:
    half = Decimal(1).scaleb(-minor_units(currency)) / 2
    assert abs(round_money(amount, currency) - amount) <= half
