"""What a newcomer meets first: --help, --version, db current, a bad data dir, a taken port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.timeout(60)


def _quotaplane(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # No QUOTAPLANE_* from the caller's environment: what a newcomer's shell would have.
    kept = {k: v for k in ("PYTHONPATH",) if (v := os.environ.get(k))}
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), **kept, **(env or {})}
    return subprocess.run(
        [str(BIN / "quotaplane"), *args],
        cwd=cwd, env=clean, capture_output=True, text=True, timeout=45, check=False,
    )  # fmt: skip


def test_help_is_plain_text_and_lists_the_admin_commands(tmp_path: Path) -> None:
    done = _quotaplane("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "``" not in done.stdout
    assert "admin commands" in done.stdout
    for command in ("tenants", "keys", "usage", "invoices", "plans list", "plans reload"):
        assert command in done.stdout


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = _quotaplane("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("quotaplane ") and done.stdout.split()[1][0].isdigit()


def test_db_current_outside_the_repo_creates_nothing(tmp_path: Path) -> None:
    done = _quotaplane("db", "current", cwd=tmp_path)
    assert done.returncode == 1
    assert "no ledger at" in done.stderr and "nothing created" in done.stderr
    assert not (tmp_path / ".data").exists()


def test_a_bad_data_dir_is_a_configuration_error_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"QUOTAPLANE_DATA_DIR": str(blocker / "data")}
    for args in (
        ("db", "upgrade"),
        ("serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "off"),
    ):
        done = _quotaplane(*args, cwd=tmp_path, env=env)
        assert done.returncode == 2, done.stderr
        assert "QUOTAPLANE_DATA_DIR" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("flag", "setting"),
    [("--grpc-addr", "QUOTAPLANE_GRPC_ADDR"), ("--authz-http-addr", "QUOTAPLANE_AUTHZ_HTTP_ADDR")],
)
def test_serve_exits_at_once_when_its_port_is_taken(
    tmp_path: Path, flag: str, setting: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--grpc-addr": "127.0.0.1:0", "--authz-http-addr": "127.0.0.1:0"}
        ports[flag] = f"127.0.0.1:{port}"
        started = time.monotonic()
        done = _quotaplane("serve", *(arg for item in ports.items() for arg in item),
                           "--metrics-addr", "off", "--data-dir", str(tmp_path / "data"),
                           cwd=tmp_path)  # fmt: skip
        took = time.monotonic() - started
    assert done.returncode == 3
    assert setting in done.stderr and "in use" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert took < 5, f"took {took:.1f} s"  # was 15+ s: the flusher's bounded shutdown step
    assert not (tmp_path / "data").exists()  # nothing was started
