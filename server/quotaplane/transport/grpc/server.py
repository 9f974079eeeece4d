"""The grpc.aio server: our services, health and reflection on one port, and graceful stop."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from quotaplane.transport.grpc.auth import TokenInterceptor
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc

log = logging.getLogger(__name__)

QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
SERVED = (QUOTA_SERVICE, ADMIN_SERVICE, AUTHZ_SERVICE)


@dataclass(frozen=True)
class Servicers:
    quota: quota_pb2_grpc.QuotaServiceServicer
    admin: admin_pb2_grpc.AdminServiceServicer
    authz: Any


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: HealthServicer
    port: int

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting calls, report NOT_SERVING, let in-flight calls finish within the grace."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)


async def start_server(
    addr: str,
    servicers: Servicers,
    *,
    admin_token: str,
    service_token: str = "",
    max_concurrent_streams: int = 1000,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Build, bind and start the server; returns once it accepts calls.

    ``interceptors`` run outside the token check (first = outermost), so what they observe
    includes the calls the token check refuses.
    """
    server = grpc.aio.server(
        interceptors=[*interceptors, TokenInterceptor(admin_token, service_token)],
        options=[
            ("grpc.max_concurrent_streams", max_concurrent_streams),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    quota_pb2_grpc.add_QuotaServiceServicer_to_server(servicers.quota, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicers.admin, server)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicers.authz, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((*SERVED, health_name, reflection.SERVICE_NAME), server)
    port = (
        server.add_secure_port(addr, credentials) if credentials else server.add_insecure_port(addr)
    )
    if port == 0:
        raise OSError(f"cannot listen on {addr}: address in use or not available")
    await server.start()
    for name in ("", *SERVED):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("grpc server listening", extra={"addr": addr, "port": port, "services": list(SERVED)})
    return RunningServer(server=server, health=health, port=port)
