"""The HTTP ext_authz route table: costs from configuration, validated in full at start."""

from __future__ import annotations

import pytest
import yaml

from quotaplane.config import ConfigError, load_settings
from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.quota.routes import DEFAULT_ROUTE, RouteCost, RouteTable
from tests.harness.gateway import render


def test_exact_beats_prefix_and_longer_prefix_beats_shorter() -> None:
    table = RouteTable.parse("/v1/*=requests:2, /v1/rate/*=rating:3, /v1/rate/bulk=rating.bulk:10")
    assert table.lookup("/v1/rate/bulk") == RouteCost("rating.bulk", 10)
    assert table.lookup("/v1/rate/bulk/x") == RouteCost("rating", 3)
    assert table.lookup("/v1/other") == RouteCost("requests", 2)
    assert table.lookup("/healthz") == DEFAULT_ROUTE


def test_the_query_string_is_not_part_of_the_match() -> None:
    table = RouteTable.parse("/v1/rate/bulk=requests:10")
    assert table.lookup("/v1/rate/bulk?cost=1") == RouteCost("requests", 10)
    assert table.lookup("/v1/rate/bulkier") == DEFAULT_ROUTE


def test_an_empty_table_charges_one_request_for_everything() -> None:
    assert len(RouteTable.parse("")) == 0
    assert RouteTable.parse("").lookup("/anything") == RouteCost("requests", 1)


@pytest.mark.parametrize(
    "text",
    [
        "/v1/rate=requests:\u0661\u0660",  # Arabic-Indic digits pass str.isdigit, not ours
        "/v1/rate=requests:²",
        "/v1/rate=requests:0",
        "/v1/rate=requests:-1",
        "/v1/rate=requests:1000001",
        "/v1/rate=requests:99999999999999999999",
        "/v1/rate=Requests",
        "/v1/rate=",
        "v1/rate=requests",
        "/v1/*/x=requests",
        "/v1/rate=requests,/v1/rate=requests:2",
    ],
)
def test_malformed_routes_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        RouteTable.parse(text)


def test_a_malformed_route_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="QUOTAPLANE_AUTHZ_ROUTES"):
        load_settings({"QUOTAPLANE_AUTHZ_ROUTES": "/v1/rate=requests:1x"})


@pytest.mark.parametrize("value", ["0", "65", "two", "-1"])
def test_workers_must_be_a_sane_count(value: str) -> None:
    with pytest.raises(ConfigError, match="QUOTAPLANE_WORKERS"):
        load_settings({"QUOTAPLANE_WORKERS": value})


def test_the_shipped_route_table_prices_routes_as_the_grpc_context_extensions_do() -> None:
    config = yaml.safe_load(render.render(render.TEMPLATE, authz="grpc"))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    table = RouteTable.parse(render.AUTHZ_ROUTES)
    priced = 0
    for route in routes:
        authz = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz", {})
        extensions = authz.get("check_settings", {}).get("context_extensions")
        if extensions and "path" in route["match"]:
            expected = RouteCost(extensions["metric"], int(extensions["cost"]))
            assert table.lookup(route["match"]["path"]) == expected
            priced += 1
    assert priced == 2
