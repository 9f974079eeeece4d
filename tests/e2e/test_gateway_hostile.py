"""Misconfigured routes and suspended tenants through a real Envoy that fails OPEN.

Only a storage failure may reach Envoy's failure mode: a route whose metric is not in the
tenant's plan, a route with a bad cost, or a suspended tenant are decisions (403), so even a
``failure_mode_allow: true`` listener denies them and the upstream never sees the request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotaplane_client.v1 import admin_pb2
from tests.e2e.test_gateway import Gateway, _eventually, gateway, rate

pytestmark = pytest.mark.timeout(120)

# Each bad route rewrites to the sample's /v1/rate, so a request that got through would be a 200.
BAD_COSTS = {"abc": "abc", "neg": "-1", "empty": "", "huge": "99999999999", "sup": "²", "ar": "١٢"}


def _route(path: str, metric: str, cost: str) -> str:
    extensions = json.dumps({"metric": metric, "cost": cost, "route": path.strip("/")})
    return (
        f"              - match: {{prefix: {path}}}\n"
        f"                route: {{cluster: openclaw, prefix_rewrite: /v1/rate}}\n"
        f"                typed_per_filter_config:\n"
        f"                  envoy.filters.http.ext_authz:\n"
        f'                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute\n'  # noqa: E501
        f"                    check_settings:\n"
        f"                      context_extensions: {extensions}\n"
    )


ROUTES = _route("/v1/mismatch", "rating.bulk", "1") + "".join(
    _route(f"/v1/cost/{name}", "requests", cost) for name, cost in BAD_COSTS.items()
)


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_key_prefix: str
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway-hostile")
    with gateway(workdir, redis_url, f"{redis_key_prefix}-gwh", extra_routes=ROUTES) as g:
        yield g


def _remaining(gw: Gateway, tenant_id: str) -> int:
    """The month's remaining units, by a dry run (reads the counter, charges nothing)."""
    return int(gw.admin.check_quota(tenant_id, dry_run=True).limits[0].remaining)


def test_a_route_whose_metric_is_not_in_the_plan_is_denied_even_failing_open(
    gw: Gateway,
) -> None:
    tenant_id, _, key = gw.tenant_with_key()
    for port in (gw.open, gw.closed):
        status, headers, body = rate(port, key, path="/v1/mismatch")
        assert status == 403, body
        assert body["error"] == "route_misconfigured"
        assert "rating.bulk" in body["message"] and "gateway" in body["message"]
        assert "x-seen-tenant-id" not in headers  # never reached the upstream
    assert _remaining(gw, tenant_id) == 20  # nothing metered


@pytest.mark.parametrize("name", sorted(BAD_COSTS))
def test_a_bad_route_cost_is_denied_even_failing_open(gw: Gateway, name: str) -> None:
    _, _, key = gw.tenant_with_key()
    status, headers, body = rate(gw.open, key, path=f"/v1/cost/{name}")
    assert status == 403, body
    assert body["error"] == "route_misconfigured" and "cost" in body["message"]
    assert "x-seen-tenant-id" not in headers


@pytest.mark.parametrize("key", [None, "qp_live_not-a-key-we-issued"])
def test_a_bad_route_without_a_valid_key_is_401(gw: Gateway, key: str | None) -> None:
    status, headers, body = rate(gw.open, key, path="/v1/cost/abc")
    assert status == 401, body
    assert "x-seen-tenant-id" not in headers


def test_a_suspended_tenant_is_403_suspended_on_any_route_even_failing_open(gw: Gateway) -> None:
    tenant_id, _, key = gw.tenant_with_key()
    gw.admin.admin_call(
        "SuspendTenant", admin_pb2.SuspendTenantRequest(tenant_id=tenant_id, reason="e2e")
    )
    # The suspension reaches the tenant directory within the cache TTL (1 s).
    assert _eventually(lambda: (rate(gw.open, key)[2] or {}).get("error") == "tenant_suspended") < 3
    for path in ("/v1/rate", "/v1/mismatch", "/v1/cost/abc"):
        status, headers, body = rate(gw.open, key, path=path)
        assert status == 403, body
        assert body["error"] == "tenant_suspended"
        assert "x-seen-tenant-id" not in headers


def test_a_misconfigured_route_is_logged_once_per_route_and_plan(gw: Gateway) -> None:
    for _ in range(3):
        _, _, key = gw.tenant_with_key()
        for _ in range(3):
            assert rate(gw.closed, key, path="/v1/cost/neg")[0] == 403
    log = Path(gw.serve.process.log_path).read_text()
    logged = [line for line in log.splitlines() if "route cannot be metered" in line]
    assert len([line for line in logged if "route=v1/cost/neg" in line]) == 1


def test_a_client_can_tell_which_limit_refused_it_and_when_to_retry(gw: Gateway) -> None:
    _, _, key = gw.tenant_with_key()
    answers = [rate(gw.closed, key) for _ in range(21)]
    _, ok_headers, _ = answers[0]
    assert ok_headers["ratelimit-policy"] == '"requests/month";q=20'
    assert ok_headers["ratelimit"].startswith('"requests/month";r=19;t=')
    status, headers, body = answers[-1]
    assert status == 429
    assert body["limit"]["name"] == "requests/month" and body["limit"]["window"] == "month"
    assert isinstance(body["retry_after_seconds"], int) and body["retry_after_seconds"] > 0
    assert headers["x-ratelimit-policy"] == "requests/month"
    assert headers["ratelimit"].startswith('"requests/month";r=0;t=')
