"""Fixed UTC windows and calendar-month billing periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.windows import (
    Period,
    Window,
    window_reset,
    window_seconds_left,
    window_start,
)

instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9998, 12, 31, 23, 59, 59, 999999)
).map(lambda naive: naive.replace(tzinfo=UTC))
windows = st.sampled_from(list(Window))
periods = st.builds(Period, st.integers(1970, 9998), st.integers(1, 12))


def utc(year: int, month: int, day: int, *time: int) -> datetime:
    hour, minute, second, microsecond = (*time, 0, 0, 0, 0)[:4]
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


@given(window=windows, at=instants)
def test_an_instant_lies_in_its_window(window: Window, at: datetime) -> None:
    assert window_start(window, at) <= at < window_reset(window, at)


@given(window=windows, at=instants)
def test_reset_is_the_start_of_the_next_window(window: Window, at: datetime) -> None:
    reset = window_reset(window, at)
    if reset.year <= 9998:
        assert window_start(window, reset) == reset


@given(window=windows, at=instants)
def test_seconds_left_is_a_positive_ceiling(window: Window, at: datetime) -> None:
    left = window_seconds_left(window, at)
    assert left >= 1 and timedelta(seconds=left - 1) < window_reset(window, at) - at


@pytest.mark.parametrize(
    ("window", "start", "reset"),
    [
        (Window.SECOND, utc(2026, 11, 5, 13, 45, 7), utc(2026, 11, 5, 13, 45, 8)),
        (Window.MINUTE, utc(2026, 11, 5, 13, 45), utc(2026, 11, 5, 13, 46)),
        (Window.HOUR, utc(2026, 11, 5, 13), utc(2026, 11, 5, 14)),
        (Window.DAY, utc(2026, 11, 5), utc(2026, 11, 6)),
        (Window.MONTH, utc(2026, 11, 1), utc(2026, 12, 1)),
    ],
)
def test_windows_are_aligned_to_utc(window: Window, start: datetime, reset: datetime) -> None:
    at = utc(2026, 11, 5, 13, 45, 7, 123456)
    assert (window_start(window, at), window_reset(window, at)) == (start, reset)


def test_month_window_is_a_calendar_month_not_30_days() -> None:
    assert window_reset(Window.MONTH, utc(2026, 1, 31, 12)) == utc(2026, 2, 1)


def test_december_resets_into_january() -> None:
    assert window_reset(Window.MONTH, utc(2026, 12, 31, 23, 59, 59)) == utc(2027, 1, 1)


@pytest.mark.parametrize(("year", "days"), [(2024, 29), (2028, 29), (2100, 28), (2000, 29)])
def test_february_length_follows_leap_years(year: int, days: int) -> None:
    assert Period(year, 2).duration == timedelta(days=days)


def test_last_microsecond_of_a_month_belongs_to_it() -> None:
    at = utc(2026, 11, 30, 23, 59, 59, 999999)
    assert (Period.of(at), window_start(Window.MONTH, at)) == (Period(2026, 11), utc(2026, 11, 1))


def test_aware_non_utc_input_is_converted() -> None:
    at = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # 23:30 UTC, Nov 30
    assert window_start(Window.MONTH, at) == utc(2026, 11, 1)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        window_start(Window.DAY, datetime(2026, 11, 5))


def test_window_parse_lists_the_valid_names() -> None:
    with pytest.raises(InvalidArgument, match="second, minute, hour, day, month"):
        Window.parse("week")


def test_period_parse_and_str_round_trip() -> None:
    assert str(Period.parse("2026-11")) == "2026-11"


@pytest.mark.parametrize(
    "bad", ["2026-13", "2026-00", "26-1", "2026-1", "2026-011", " 2026-11", "2026/11", ""]
)
def test_period_parse_is_strict(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="period"):
        Period.parse(bad)


def test_period_parse_names_the_bad_month() -> None:
    with pytest.raises(InvalidArgument, match="month must be 01-12"):
        Period.parse("2026-13")


def test_period_bounds() -> None:
    period = Period(2026, 11)
    assert (period.start, period.end) == (utc(2026, 11, 1), utc(2026, 12, 1))


def test_period_next_and_previous_cross_years() -> None:
    assert (Period(2026, 12).next(), Period(2027, 1).previous()) == (
        Period(2027, 1),
        Period(2026, 12),
    )


@given(period=periods.filter(lambda p: (1970, 1) < (p.year, p.month) < (9998, 12)))
def test_next_and_previous_are_inverse_and_adjacent(period: Period) -> None:
    assert period.next().previous() == period
    assert period.end == period.next().start


@given(at=instants)
def test_period_of_an_instant_contains_it(at: datetime) -> None:
    assert Period.of(at).contains(at)


def test_periods_order_chronologically() -> None:
    assert sorted([Period(2027, 1), Period(2026, 12)]) == [Period(2026, 12), Period(2027, 1)]
