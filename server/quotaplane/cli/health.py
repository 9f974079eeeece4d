"""``quotaplane health``: ask a running server's grpc.health.v1 service whether it serves.

Made for container health checks and exec probes (the image has no grpcurl): exit 0 when the
server answers SERVING, 1 when it answers anything else or does not answer within the timeout,
with the reason on stderr. The address is ``--target``, else ``$QUOTAPLANE_TARGET``, else the
server's own ``QUOTAPLANE_GRPC_ADDR`` dialled on loopback (a wildcard bind address such as
0.0.0.0 cannot be dialled). Plaintext only: with QUOTAPLANE_TLS_CERT set it refuses to guess
and says so (exit 2), rather than reporting a serving server as down.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quotaplane.config import ConfigError, load_settings

EXIT_SERVING, EXIT_NOT_SERVING = 0, 1
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}


def dial_address(grpc_addr: str) -> str:
    """Where a local client reaches a server bound to ``grpc_addr`` (host:port, [v6]:port)."""
    host, _, port = grpc_addr.rpartition(":")
    return f"{_WILDCARDS.get(host.strip('[]'), host)}:{port}"


def _default_target() -> str:
    if target := os.environ.get("QUOTAPLANE_TARGET"):
        return target
    settings = load_settings(os.environ)
    if settings.tls_cert is not None:
        raise ConfigError(
            "QUOTAPLANE_TLS_CERT is set: `quotaplane health` speaks plaintext only; probe the "
            "TLS port with a TLS client (grpcurl -cacert ... grpc.health.v1.Health/Check)"
        )
    return dial_address(settings.grpc_addr)


def probe(target: str, service: str, timeout: float) -> tuple[bool, str]:
    """(serving?, what the server said or why it could not be asked)."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return False, f"{error.code().name}: {error.details()}"
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    return serving, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def run(args: argparse.Namespace) -> int:
    target = args.target or _default_target()
    serving, said = probe(target, args.service, args.timeout)
    what = f"{target} {args.service or '(server)'}"
    if serving:
        print(f"{said} {what}")
        return EXIT_SERVING
    print(f"quotaplane: {what}: {said}", file=sys.stderr)
    return EXIT_NOT_SERVING


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "health", help="exit 0 if a running server answers SERVING (for health checks)"
    )
    parser.add_argument(
        "--target",
        help="server address; default $QUOTAPLANE_TARGET, else QUOTAPLANE_GRPC_ADDR on loopback",
    )
    parser.add_argument(
        "--service",
        default="",
        help="one service, e.g. quotaplane.v1.QuotaService (default: the whole server)",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    parser.set_defaults(func=run)
