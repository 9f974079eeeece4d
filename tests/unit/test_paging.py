"""Page sizes and page tokens of admin listings: round trips, and every bad token refused."""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.paging import Cursor, decode_page_token, parse_page_size

AT = datetime(2026, 11, 24, 5, 30, 1, 123456, tzinfo=UTC)


def test_page_size_zero_means_the_default() -> None:
    assert parse_page_size(0) == 100


@pytest.mark.parametrize("size", [1, 100, 1000])
def test_page_sizes_in_range_are_kept(size: int) -> None:
    assert parse_page_size(size) == size


@pytest.mark.parametrize("size", [-1, 1001, 2**31 - 1])
def test_page_sizes_out_of_range_are_refused(size: int) -> None:
    with pytest.raises(InvalidArgument, match="page_size must be between 0 and 1000"):
        parse_page_size(size)


def test_an_empty_token_is_the_first_page() -> None:
    assert decode_page_token("", {}, listing="t") is None


def test_a_token_round_trips_exactly() -> None:
    cursor = Cursor(AT, "0b7c1f4e-0000-4000-8000-000000000001", {"plan": "x"}, listing="t")
    assert decode_page_token(cursor.encode(), {"plan": "x"}, listing="t") == cursor


def test_a_token_is_normalized_to_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    decoded = decode_page_token(Cursor(local, "a", listing="t").encode(), {}, listing="t")
    assert decoded is not None and decoded.created_at == AT and decoded.created_at.tzinfo == UTC


def test_a_token_for_other_filters_is_refused() -> None:
    token = Cursor(created_at=AT, id="a", filters={"plan": "growth"}, listing="t").encode()
    with pytest.raises(InvalidArgument, match="other filters"):
        decode_page_token(token, {"plan": "starter"}, listing="t")


def test_a_token_from_another_listing_is_refused() -> None:
    token = Cursor(created_at=AT, id="a", listing="invoices").encode()
    with pytest.raises(InvalidArgument, match="another listing"):
        decode_page_token(token, {}, listing="tenants")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "!!!!",
        "x" * 5000,
        _b64(b"not json"),
        _b64(b"[1, 2]"),
        _b64(b'"text"'),
        _b64(json.dumps({"v": 1, "c": "2026-11-24T05:30:01", "i": "a", "f": {}}).encode()),
        _b64(json.dumps({"v": 2, "c": AT.isoformat(), "i": "a", "f": {}}).encode()),
        _b64(json.dumps({"v": 1, "c": AT.isoformat(), "i": 7, "f": {}}).encode()),
        _b64(json.dumps({"v": 1, "c": AT.isoformat(), "i": "a", "f": {"plan": 1}}).encode()),
        _b64(json.dumps({"v": 1, "c": "yesterday", "i": "a", "f": {}}).encode()),
        _b64(json.dumps({"v": 1, "i": "a", "f": {}}).encode()),
    ],
)
def test_malformed_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token is not a token"):
        decode_page_token(token, {}, listing="t")


@given(st.text(max_size=300))
def test_no_string_crashes_the_decoder(token: str) -> None:
    with contextlib.suppress(InvalidArgument):
        decode_page_token(token, {}, listing="t")
