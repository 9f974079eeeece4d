"""Time windows for limits, and billing periods; all in UTC.

Rate and quota windows are fixed windows aligned to UTC: a ``minute`` window runs from
``hh:mm:00.000000`` up to (not including) the next minute, and ``month`` is the calendar
month in UTC, never "30 days". A window's reset instant is its exclusive end, which is
also the start of the next window.

A billing :class:`Period` is a calendar month in UTC written ``YYYY-MM``.

Every datetime taken or returned is timezone-aware and in UTC; aware datetimes in
another zone are converted, naive ones are refused (a naive time is a bug waiting to be
billed in the wrong month). Supported years are 1970-9998, so the end of every period
can be represented.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from quotaplane.domain.errors import InvalidArgument, shown

MIN_YEAR = 1970
MAX_YEAR = 9998

_PERIOD_RE = re.compile(r"([0-9]{4})-([0-9]{2})")


class Window(enum.StrEnum):
    """A fixed window aligned to UTC."""

    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"

    @classmethod
    def parse(cls, value: str) -> Window:
        """The window named ``value``; InvalidArgument listing the valid names otherwise."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(w.value for w in cls)
            raise InvalidArgument(
                f"unknown window {shown(value)}; expected one of {names}"
            ) from None


_FIXED_LENGTH = {
    Window.SECOND: timedelta(seconds=1),
    Window.MINUTE: timedelta(minutes=1),
    Window.HOUR: timedelta(hours=1),
    Window.DAY: timedelta(days=1),
}


def fixed_length(window: Window) -> timedelta | None:
    """The window's length; None for months, whose length varies."""
    return _FIXED_LENGTH.get(window)


def as_utc(at: datetime, *, field_name: str = "time") -> datetime:
    """``at`` in UTC; InvalidArgument if it is naive or outside the supported years."""
    if not isinstance(at, datetime):
        raise InvalidArgument(f"{field_name} must be a datetime, got {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidArgument(f"{field_name} must be timezone-aware (UTC), got naive {at}")
    utc = at.astimezone(UTC)
    if not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise InvalidArgument(f"{field_name} {utc.isoformat()} is outside {MIN_YEAR}-{MAX_YEAR}")
    return utc


def window_start(window: Window, at: datetime) -> datetime:
    """The inclusive start of the window containing ``at``."""
    at = as_utc(at)
    if window is Window.MONTH:
        return Period.of(at).start
    if window is Window.SECOND:
        return at.replace(microsecond=0)
    if window is Window.MINUTE:
        return at.replace(second=0, microsecond=0)
    if window is Window.HOUR:
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def window_reset(window: Window, at: datetime) -> datetime:
    """The exclusive end of the window containing ``at``: the instant its counter resets."""
    if window is Window.MONTH:
        return Period.of(as_utc(at)).end
    return window_start(window, at) + _FIXED_LENGTH[window]


def window_seconds_left(window: Window, at: datetime) -> int:
    """Whole seconds until the reset, rounded up (at least 1): a ``Retry-After`` value."""
    left = window_reset(window, at) - as_utc(at)
    return max(1, math.ceil(left / timedelta(seconds=1)))


@dataclass(frozen=True, order=True)
class Period:
    """A billing period: one calendar month in UTC, written ``YYYY-MM``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if isinstance(self.year, bool) or not isinstance(self.year, int):
            raise InvalidArgument(f"period year must be an integer, got {self.year!r}")
        if isinstance(self.month, bool) or not isinstance(self.month, int):
            raise InvalidArgument(f"period month must be an integer, got {self.month!r}")
        if not MIN_YEAR <= self.year <= MAX_YEAR:
            raise InvalidArgument(f"period year must be {MIN_YEAR}-{MAX_YEAR}, got {self.year}")
        if not 1 <= self.month <= 12:
            raise InvalidArgument(f"period month must be 01-12, got {self.month}")

    @classmethod
    def parse(cls, value: str) -> Period:
        """``"2026-11"`` -> Period(2026, 11); strictly four-digit year and two-digit month."""
        match = _PERIOD_RE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise InvalidArgument(f"period must be YYYY-MM like 2026-11, got {shown(value)}")
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12:
            raise InvalidArgument(f"period {shown(value)}: month must be 01-12")
        return cls(year, month)

    @classmethod
    def of(cls, at: datetime) -> Period:
        """The period that contains the instant ``at``."""
        utc = as_utc(at)
        return cls(utc.year, utc.month)

    @property
    def start(self) -> datetime:
        """First instant of the month, inclusive."""
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """First instant of the next month: the exclusive end of this period."""
        year, month = divmod(self.year * 12 + self.month, 12)  # month index of next month
        return datetime(year, month + 1, 1, tzinfo=UTC)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def contains(self, at: datetime) -> bool:
        return self.start <= as_utc(at) < self.end

    def next(self) -> Period:
        year, month = divmod(self.year * 12 + self.month, 12)
        return Period(year, month + 1)

    def previous(self) -> Period:
        year, month = divmod(self.year * 12 + self.month - 2, 12)
        return Period(year, month + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"
