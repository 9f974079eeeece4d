"""The engine's cached window bounds agree with windows.py for any instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from quotaplane.domain.quota.engine import window_bounds
from quotaplane.domain.windows import Window, window_reset, window_start

INSTANTS = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
)


@given(INSTANTS, st.sampled_from(list(Window)))
def test_cached_bounds_equal_the_window_functions(at: datetime, window: Window) -> None:
    start, reset = window_bounds(window, int(at.timestamp()))
    assert start == int(window_start(window, at).timestamp())
    assert reset == window_reset(window, at)


def test_the_last_millisecond_of_december_resets_at_new_year() -> None:
    at = datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    start, reset = window_bounds(Window.MONTH, int(at.timestamp()))
    assert start == int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    assert reset == at + timedelta(milliseconds=1)
