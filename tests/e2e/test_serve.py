"""`quotaplane serve` as an operator runs it: embedded defaults, grpcurl, one instance, SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.net import free_port
from tests.harness.processes import ManagedProcess
from tests.harness.quotaplane_server import serve_process

BIN = Path(sys.executable).parent


def _serve(tmp_path: Path, data_dir: Path, port: int, name: str) -> ManagedProcess:
    env = {"QUOTAPLANE_DATA_DIR": str(data_dir), "QUOTAPLANE_ADMIN_TOKEN": ""}
    return serve_process(tmp_path, port=port, env=env, name=name).process


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def embedded_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    data_dir = Path("/tmp") / f"qp-e2e-{os.getpid()}-{port}"  # short: unix socket paths are limited
    with _serve(tmp_path, data_dir, port, "serve") as proc:
        proc.start()
        proc.wait_for_port(port, timeout=60)
        yield proc, port, data_dir


@pytest.mark.timeout(120)
def test_health_and_reflection_through_grpcurl(embedded_server) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = embedded_server
    health = _grpcurl(f"127.0.0.1:{port}", "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
    listed = _grpcurl(f"127.0.0.1:{port}", "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "quotaplane.v1.QuotaService",
        "quotaplane.v1.AdminService",
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
    } <= services


@pytest.mark.timeout(120)
def test_quotaplane_health_answers_for_the_server_and_each_service(embedded_server) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = embedded_server

    def health(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "quotaplane"), "health", "--target", f"127.0.0.1:{port}", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)

    server = health()
    assert (server.returncode, server.stdout.split()[0]) == (0, "SERVING"), server.stderr
    assert health("--service", "envoy.service.auth.v3.Authorization").returncode == 0
    unknown = health("--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr and "no.such.Service" in unknown.stderr


@pytest.mark.timeout(120)
def test_the_embedded_default_creates_its_files(embedded_server) -> None:  # type: ignore[no-untyped-def]
    _, _, data_dir = embedded_server
    assert (data_dir / "ledger.db").exists()
    assert (data_dir / "valkey" / "valkey.sock").exists()
    assert (data_dir / "admin-token").stat().st_mode & 0o077 == 0


@pytest.mark.timeout(120)
def test_a_second_serve_on_the_same_data_dir_fails_clearly(tmp_path: Path, embedded_server) -> None:  # type: ignore[no-untyped-def]
    _, _, data_dir = embedded_server
    with _serve(tmp_path, data_dir, free_port(), "second") as second:
        second.start()
        assert _wait_exit(second, timeout=60) == 3
        assert f"data directory {data_dir} is in use" in second.log_tail()


@pytest.mark.timeout(120)
def test_sigterm_stops_the_server_and_its_valkey(embedded_server) -> None:  # type: ignore[no-untyped-def]
    proc, _, data_dir = embedded_server
    valkey_pid = int((data_dir / "valkey" / "valkey.pid").read_text())
    assert proc.terminate(timeout=30) == 0  # SIGTERM, then wait
    assert not _alive(valkey_pid), "embedded valkey outlived quotaplane"
    assert not (data_dir / "serve.lock").read_text(), "the lock still names a pid"


def _wait_exit(proc: ManagedProcess, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.returncode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
