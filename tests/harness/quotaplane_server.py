"""`quotaplane serve` as a subprocess for tests: free port, own data dir, log file, readiness."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quotaplane.app.credentials import Tokens
from tests.harness.net import free_port
from tests.harness.processes import ManagedProcess
from tests.harness.tokens import BILLING_TOKEN, SERVICE_TOKEN

BIN = Path(sys.executable).parent
ADMIN_TOKEN = "test-admin-token"


@dataclass
class ServeProcess:
    process: ManagedProcess
    port: int
    admin_token: str
    tokens: Tokens
    http_port: int = 0  # Envoy's HTTP ext_authz (QUOTAPLANE_AUTHZ_HTTP_ADDR)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_token}"),)


def serve_process(
    workdir: Path,
    *,
    redis_url: str = "",
    database_url: str = "",
    key_prefix: str = "qp",
    plans_path: Path | None = None,
    admin_token: str = ADMIN_TOKEN,
    port: int | None = None,
    http_port: int | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "serve",
    args: tuple[str, ...] = (),
) -> ServeProcess:
    """A configured, not yet started server; ``process.start()`` then wait on ``port``.

    Empty ``redis_url``/``database_url`` mean the embedded default (private valkey, SQLite) in
    ``<workdir>/data-<name>`` unless ``env`` names another QUOTAPLANE_DATA_DIR.
    """
    port = port or free_port()
    http_port = http_port or free_port()
    settings = {
        "QUOTAPLANE_GRPC_ADDR": f"127.0.0.1:{port}",
        "QUOTAPLANE_AUTHZ_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "QUOTAPLANE_REDIS_URL": redis_url,
        "QUOTAPLANE_DATABASE_URL": database_url,
        "QUOTAPLANE_REDIS_KEY_PREFIX": key_prefix,
        "QUOTAPLANE_ADMIN_TOKEN": admin_token,
        "QUOTAPLANE_SERVICE_TOKEN": SERVICE_TOKEN,
        "QUOTAPLANE_BILLING_TOKEN": BILLING_TOKEN,
        "QUOTAPLANE_DATA_DIR": str(workdir / f"data-{name}"),
        "QUOTAPLANE_LOG_FORMAT": "text",
        "QUOTAPLANE_PLANS": str(plans_path) if plans_path else "",
        # A loaded 2-core CI machine must not turn a slow moment into UNAVAILABLE; tests of
        # the timeout itself set their own.
        "QUOTAPLANE_REDIS_TIMEOUT": "2s",
        **(env or {}),
    }
    process = ManagedProcess(
        [str(BIN / "quotaplane"), "serve", *args],
        env=settings,
        log_path=workdir / f"{name}.log",
        name=name,
    )
    tokens = Tokens(
        admin_token,
        settings["QUOTAPLANE_SERVICE_TOKEN"],
        settings["QUOTAPLANE_BILLING_TOKEN"],
    )
    return ServeProcess(process, port, admin_token, tokens, http_port)


def start_serve(workdir: Path, **kwargs: object) -> ServeProcess:
    """Start a server and wait until it accepts connections (raises with its log otherwise)."""
    server = serve_process(workdir, **kwargs)  # type: ignore[arg-type]
    server.process.start()
    try:
        server.process.wait_for_port(server.port, timeout=60)
    except BaseException:
        server.process.close()
        raise
    return server
