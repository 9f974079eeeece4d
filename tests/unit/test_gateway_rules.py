"""The gateway's route-cost rule (domain): ASCII digits, 1..MAX_COST, nothing else."""

from __future__ import annotations

import pytest

from quotaplane.domain.quota.decisions import MAX_COST
from quotaplane.domain.quota.gateway import RouteMisconfigured, parse_route_cost


@pytest.mark.parametrize("raw", ["1", "10", "0010", str(MAX_COST)])
def test_ascii_whole_numbers_in_range_are_costs(raw: str) -> None:
    assert parse_route_cost(raw) == int(raw)


@pytest.mark.parametrize(
    "raw",
    ["²", "١٢", "-1", "", "abc", "99999999999", str(MAX_COST + 1), "0", " 1", "1.5", "1e3", "+1"],
)
def test_anything_else_is_a_misconfiguration_naming_the_cost(raw: str) -> None:
    with pytest.raises(RouteMisconfigured, match="route cost"):
        parse_route_cost(raw)


def test_a_huge_cost_is_quoted_by_a_short_prefix_only() -> None:
    with pytest.raises(RouteMisconfigured) as caught:
        parse_route_cost("9" * 100_000)
    assert len(str(caught.value)) < 120
