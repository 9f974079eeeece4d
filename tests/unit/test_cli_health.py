"""`quotaplane health`: where it dials, and what it refuses to guess (no server needed here;
tests/e2e/test_serve.py and tests/unit/test_compose.py run it against real servers)."""

from __future__ import annotations

import pytest

from quotaplane.cli.health import EXIT_NOT_SERVING, dial_address
from quotaplane.cli.main import EXIT_USAGE, main
from tests.harness.net import free_port


@pytest.mark.parametrize(
    ("bind", "dial"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        (":50051", "127.0.0.1:50051"),
        ("[::]:50051", "[::1]:50051"),
        ("127.0.0.1:7000", "127.0.0.1:7000"),
        ("10.1.2.3:9", "10.1.2.3:9"),
        ("[::1]:5", "[::1]:5"),
        ("quotaplane:50051", "quotaplane:50051"),
    ],
)
def test_a_wildcard_bind_address_is_dialled_on_loopback(bind: str, dial: str) -> None:
    assert dial_address(bind) == dial


def test_nothing_listening_exits_1_naming_the_target(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("QUOTAPLANE_TARGET", raising=False)
    port = free_port()
    monkeypatch.setenv("QUOTAPLANE_GRPC_ADDR", f"0.0.0.0:{port}")
    assert main(["health", "--timeout", "2"]) == EXIT_NOT_SERVING
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "UNAVAILABLE" in err


def test_a_tls_server_is_not_probed_in_plaintext(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    monkeypatch.delenv("QUOTAPLANE_TARGET", raising=False)
    monkeypatch.setenv("QUOTAPLANE_TLS_CERT", str(cert))
    monkeypatch.setenv("QUOTAPLANE_TLS_KEY", str(key))
    assert main(["health"]) == EXIT_USAGE
    assert "QUOTAPLANE_TLS_CERT" in capsys.readouterr().err
