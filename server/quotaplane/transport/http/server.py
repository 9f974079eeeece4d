"""The HTTP ext_authz listener: ``protocol.AuthzProtocol`` on a socket bound here.

The socket is bound here, so that with ``--workers N`` every worker binds the same port with
SO_REUSEPORT and the kernel spreads Envoy's connections over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from quotaplane.transport.http.protocol import Answerer, AuthzProtocol, Connections

log = logging.getLogger(__name__)

BACKLOG = 2048


def bind_socket(addr: str, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 hosts in brackets)."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, int(port)))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {addr} (HTTP ext_authz): {error.strerror}") from None
    return sock


@dataclass
class RunningHttp:
    server: asyncio.Server
    port: int
    connections: Connections

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, answer what is in flight within the grace, then close everything."""
        self.server.close()
        for connection in list(self.connections.open):
            connection.close()  # idle ones now, busy ones after their last answer
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await self.connections.empty.wait()
        for connection in list(self.connections.open):
            connection.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await self.server.wait_closed()


async def start_http(addr: str, answer: Answerer, *, reuse_port: bool = False) -> RunningHttp:
    sock = bind_socket(addr, reuse_port=reuse_port)
    connections = Connections()
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: AuthzProtocol(answer, connections), sock=sock, backlog=BACKLOG
        )
    except BaseException:
        sock.close()
        raise
    port = int(sock.getsockname()[1])
    log.info("HTTP ext_authz listening", extra={"addr": addr, "port": port})
    return RunningHttp(server, port, connections)
