"""The shared pieces of the in-process caches: the negative cache and the poll watermark."""

from __future__ import annotations

from datetime import UTC, datetime

from quotaplane.services.polled_cache import NEGATIVE_MAX, OVERLAP, NegativeCache, poll_since


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_unknown_id_is_remembered_for_the_ttl_only() -> None:
    clock = Clock()
    cache = NegativeCache(0.5, clock)
    cache.add("a")
    assert "a" in cache
    clock.now += 0.6
    assert "a" not in cache


def test_discard_forgets_at_once() -> None:
    cache = NegativeCache(10, Clock())
    cache.add("a")
    cache.discard("a")
    assert "a" not in cache


def test_the_cache_never_holds_more_than_its_bound() -> None:
    clock = Clock()
    cache = NegativeCache(60, clock)
    for i in range(NEGATIVE_MAX + 5):
        cache.add(str(i))
    assert len(cache._until) <= NEGATIVE_MAX
    assert str(NEGATIVE_MAX + 4) in cache  # the newest one is always kept


def test_polls_start_from_everything_then_overlap_the_watermark() -> None:
    seen = datetime(2026, 11, 24, 12, tzinfo=UTC)
    assert poll_since(None) is None
    assert poll_since(seen) == seen - OVERLAP
