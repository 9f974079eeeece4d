"""An always-allow Envoy ext_authz gRPC server: the stand-in for quotaplane in gateway tests.

It answers every `envoy.service.auth.v3.Authorization/Check` with OK and the same header
mutations quotaplane makes on an admitted request:

- upstream: sets `x-tenant-id: <tenant>` and removes `x-api-key` / `authorization`;
- client:   adds `x-ratelimit-limit` / `x-ratelimit-remaining`, plus `x-authz-metric` and
  `x-authz-cost`, an echo of the route's `context_extensions` so tests can check them.

It lets the Envoy config be tested (and Envoy + OpenClaw be benchmarked) without quotaplane.

    python tests/e2e/trivial_authz.py --host 127.0.0.1 --port 0 [--tenant t-test]

prints "trivial-authz listening on HOST:PORT" once serving, stops on SIGTERM/SIGINT.
In-process: `server, port = await start("127.0.0.1", 0)`, later `await server.stop(None)`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]

DEFAULT_TENANT = "t-test"
RATE_LIMIT = 1000


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


class AlwaysAllow(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Admits every request as `tenant`."""

    def __init__(self, tenant: str = DEFAULT_TENANT) -> None:
        self.tenant = tenant
        self.checks = 0  # how many Check calls were answered, for in-process tests

    async def Check(  # the gRPC method name, hence CamelCase
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        self.checks += 1
        extensions = request.attributes.context_extensions
        ok = external_auth_pb2.OkHttpResponse(
            headers=[_header("x-tenant-id", self.tenant)],
            headers_to_remove=["x-api-key", "authorization"],
            response_headers_to_add=[
                _header("x-ratelimit-limit", str(RATE_LIMIT)),
                _header("x-ratelimit-remaining", str(RATE_LIMIT - 1)),
                _header("x-authz-metric", extensions.get("metric", "")),
                _header("x-authz-cost", extensions.get("cost", "")),
            ],
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK), ok_response=ok
        )


async def start(
    host: str = "127.0.0.1", port: int = 0, tenant: str = DEFAULT_TENANT
) -> tuple[grpc.aio.Server, int]:
    """Start serving; returns the server and the port it is bound to (port 0 = any free)."""
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AlwaysAllow(tenant), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    return server, bound


async def serve(host: str, port: int, tenant: str) -> None:
    server, bound = await start(host, port, tenant)
    print(f"trivial-authz listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Always-allow Envoy ext_authz gRPC server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--tenant", default=DEFAULT_TENANT)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.tenant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
