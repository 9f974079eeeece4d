"""The shipped Envoy config, checked by the real envoy binary.

- every shipped variant (fail closed, fail open) renders and passes `envoy --mode validate`;
- a running Envoy, with the sample OpenClaw upstream and an always-allow ext_authz server
  (tests/e2e/trivial_authz.py), forwards admitted requests with `x-tenant-id` and without the
  caller's API key, applies the per-route cost, and skips ext_authz on /healthz;
- with the ext_authz server stopped, fail closed answers 503 and fail open passes requests
  through marked `x-envoy-auth-failure-mode-allowed`.

Every process binds port 0 and announces (or, for Envoy, publishes via its admin API) the port
it got, so parallel runs on one machine never race for a port.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.gateway import (
    ENVOY_DIR,
    envoy_binary,
    render,
    request,
    start_authz,
    start_envoy,
    start_openclaw,
)
from tests.harness.net import free_port
from tests.harness.processes import ManagedProcess

VARIANTS = {"fail-closed": False, "fail-open": True}
API_KEY = "qp_live_e2e_secret"
RATE = {"type": "domain", "value": "example.com"}

pytestmark = pytest.mark.timeout(90)


# --- rendering and validation -----------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_config_passes_envoy_validate(variant: str, tmp_path: Path) -> None:
    config = tmp_path / f"envoy.{variant}.yaml"
    config.write_text(
        render.render(
            render.TEMPLATE,
            listen_port=free_port(),
            admin_port=free_port(),
            quotaplane_port=free_port(),
            openclaw_port=free_port(),
            failure_mode_allow=VARIANTS[variant],
        )
    )
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_defaults_fill_every_placeholder() -> None:
    text = render.render(render.TEMPLATE)
    assert "${" not in text
    assert "port_value: 10000" in text
    assert "failure_mode_allow: false" in text


def test_render_cli_switches_to_fail_open(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    subprocess.run(
        [sys.executable, str(ENVOY_DIR / "render.py"), "--out", str(out), "--fail-open"],
        check=True,
        timeout=30,
    )
    assert "failure_mode_allow: true" in out.read_text()


@pytest.mark.parametrize(
    "overrides",
    [{"listen_port": 70000}, {"quotaplane_port": 0}, {"no_such_var": 1}, {"openclaw_host": "a b"}],
)
def test_render_refuses_bad_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        render.render(render.TEMPLATE, **overrides)


def rate(port: int, path: str = "/v1/rate", **headers: str) -> tuple[int, dict[str, str], Any]:
    body = {"items": [RATE]} if path.endswith("bulk") else RATE
    return request(port, "POST", path, body, {"x-api-key": API_KEY, **headers})


@pytest.fixture(scope="module")
def openclaw_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    process, port = start_openclaw(tmp_path_factory.mktemp("openclaw"))
    with process:
        yield port


@dataclass
class Stack:
    closed: int  # Envoy listener port, fail closed
    open: int  # Envoy listener port, fail open
    authz: ManagedProcess


@contextlib.contextmanager
def gateway_stack(log_dir: Path, openclaw_port: int) -> Iterator[Stack]:
    with contextlib.ExitStack() as stack:
        authz, authz_port = start_authz(log_dir)
        stack.enter_context(authz)
        closed, closed_port = start_envoy(log_dir, openclaw_port, authz_port, fail_open=False)
        stack.enter_context(closed)
        opened, open_port = start_envoy(log_dir, openclaw_port, authz_port, fail_open=True)
        stack.enter_context(opened)
        yield Stack(closed_port, open_port, authz)


# --- the running gateway, ext_authz up --------------------------------------------------------


@pytest.fixture(scope="class")
def gateway_up(openclaw_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gateway_stack(tmp_path_factory.mktemp("gateway-up"), openclaw_port) as stack:
        yield stack


class TestAuthzUp:
    @pytest.fixture
    def gw(self, gateway_up: Stack) -> Stack:
        return gateway_up

    def test_admitted_request_reaches_openclaw_as_the_tenant(self, gw: Stack) -> None:
        status, headers, body = rate(gw.closed)
        assert status == 200
        assert body["tenant"] == "t-test"
        assert headers["x-seen-tenant-id"] == "t-test"

    def test_upstream_never_sees_the_api_key(self, gw: Stack) -> None:
        assert rate(gw.closed)[1]["x-seen-api-key"] == "no"
        assert rate(gw.closed, authorization=f"Bearer {API_KEY}")[1]["x-seen-api-key"] == "no"

    def test_client_cannot_choose_its_tenant(self, gw: Stack) -> None:
        assert rate(gw.closed, **{"x-tenant-id": "someone-else"})[2]["tenant"] == "t-test"

    def test_client_gets_the_rate_limit_headers(self, gw: Stack) -> None:
        headers = rate(gw.closed)[1]
        assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("1000", "999")

    @pytest.mark.parametrize(("path", "cost"), [("/v1/rate", "1"), ("/v1/rate/bulk", "10")])
    def test_route_passes_metric_and_cost_to_ext_authz(
        self, gw: Stack, path: str, cost: str
    ) -> None:
        headers = rate(gw.closed, path)[1]
        assert (headers["x-authz-metric"], headers["x-authz-cost"]) == ("requests", cost)

    def test_healthz_skips_ext_authz(self, gw: Stack) -> None:
        status, headers, _ = request(gw.closed, "GET", "/healthz")
        assert status == 200
        assert "x-ratelimit-limit" not in headers  # the authz server never saw it

    def test_unknown_path_is_answered_by_envoy(self, gw: Stack) -> None:
        status, headers, body = request(gw.closed, "GET", "/admin/secret")
        assert (status, body) == (404, {"error": "not found"})
        assert "x-seen-api-key" not in headers  # OpenClaw was not called

    def test_fail_open_gateway_marks_nothing_while_authz_is_up(self, gw: Stack) -> None:
        status, headers, body = rate(gw.open)
        assert (status, body["tenant"]) == (200, "t-test")
        assert headers["x-seen-auth-failure-mode-allowed"] == "no"

    def test_client_cannot_forge_the_fail_open_marker(self, gw: Stack) -> None:
        forged = {"x-envoy-auth-failure-mode-allowed": "true"}
        assert rate(gw.open, **forged)[1]["x-seen-auth-failure-mode-allowed"] == "no"


# --- the running gateway, ext_authz down ------------------------------------------------------


@pytest.fixture(scope="class")
def gateway_down(openclaw_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gateway_stack(tmp_path_factory.mktemp("gateway-down"), openclaw_port) as stack:
        # Both paths worked before the outage, so what follows is the outage's doing.
        assert rate(stack.closed)[0] == 200
        assert rate(stack.open)[0] == 200
        stack.authz.terminate()
        yield stack


class TestAuthzDown:
    @pytest.fixture
    def gw(self, gateway_down: Stack) -> Stack:
        return gateway_down

    def test_fail_closed_answers_503(self, gw: Stack) -> None:
        status, headers, body = rate(gw.closed)
        assert (status, body) == (503, {"error": "quota service unavailable"})
        assert "x-seen-api-key" not in headers  # OpenClaw was not called

    def test_fail_closed_still_serves_healthz(self, gw: Stack) -> None:
        assert request(gw.closed, "GET", "/healthz")[0] == 200

    def test_fail_open_passes_through_marked(self, gw: Stack) -> None:
        status, headers, body = rate(gw.open)
        assert status == 200
        assert headers["x-seen-auth-failure-mode-allowed"] == "yes"
        assert body["tenant"] is None  # nobody vouched for a tenant

    def test_fail_open_ignores_a_client_supplied_tenant(self, gw: Stack) -> None:
        headers = rate(gw.open, **{"x-tenant-id": "someone-else"})[1]
        assert "x-seen-tenant-id" not in headers

    def test_fail_open_still_strips_the_api_key(self, gw: Stack) -> None:
        assert rate(gw.open)[1]["x-seen-api-key"] == "no"
