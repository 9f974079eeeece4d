"""`make run` (scripts/run_stack.py): a second one while the first runs fails fast, in one
line, before starting anything, and the first stack keeps serving."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.gateway import request
from tests.harness.net import free_port
from tests.harness.processes import ManagedProcess

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]
PORTS = (
    "--grpc-port",
    "--http-port",
    "--authz-port",
    "--openclaw-port",
    "--envoy-admin-port",
    "--metrics-port",
)


def test_a_second_make_run_fails_fast_and_leaves_the_first_running(tmp_path: Path) -> None:
    ports = {flag: free_port() for flag in PORTS}
    argv = [sys.executable, str(ROOT / "scripts/run_stack.py"), "--data-dir", str(tmp_path)]
    argv += [str(part) for flag, port in ports.items() for part in (flag, port)]
    with ManagedProcess(argv, log_path=tmp_path / "first.log", name="make-run") as first:
        first.start()
        first.wait_until(lambda: "ready." in first.log_tail(), 120, "the first stack's ready")
        key = (tmp_path / "demo-key").read_text().strip()
        started = time.monotonic()
        second = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
        )
        took = time.monotonic() - started
        assert second.returncode == 1
        assert "ready." not in second.stdout
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use" in lines[0] and "make run" in lines[0], lines
        assert "--grpc-port" in lines[0]
        assert took < 10, f"took {took:.1f} s"
        assert first.is_running()
        status, headers, _ = request(
            ports["--http-port"], "POST", "/v1/rate", {"type": "domain", "value": "a.com"},
            {"x-api-key": key},
        )  # fmt: skip
        assert status == 200 and headers["x-seen-tenant-id"]
        status, _, usage = request(
            ports["--http-port"], "GET", "/v1/usage", None, {"x-api-key": key}
        )  # the tenant's own usage, routed by the config `make run` renders
        assert status == 200 and usage["tenant"]["id"] == headers["x-seen-tenant-id"]
        assert [day["quantity"] for day in usage["daily"]["requests"]] == [1]
