"""The HTTP ext_authz listener: uvicorn (uvloop + httptools) run inside ``serve``'s event loop.

uvicorn was chosen by measurement (bench/RESULTS.md, "HTTP ext_authz"): it met the targets,
so no hand-written protocol is needed, and it brings a maintained HTTP/1.1 parser with its
handling of malformed, pipelined and oversized requests. Only its server loop is used, not its
CLI: quotaplane owns signals, start-up order and drain. Its httptools protocol gets the bounds
on header size and time it lacks (``protocol.py``).

The socket is bound here, so that with ``--workers N`` every worker binds the same port with
SO_REUSEPORT and the kernel spreads Envoy's connections over them.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn

from quotaplane.transport.http.protocol import BoundedHttpToolsProtocol

log = logging.getLogger(__name__)

# Longer than Envoy's default upstream idle timeout (1 h): Envoy closes an idle pooled
# connection before this server would, so a check never races a server-side close.
KEEP_ALIVE_S = 3700
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
    server: uvicorn.Server
    sock: socket.socket
    port: int

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, let in-flight checks finish within the grace, then close."""
        self.server.config.timeout_graceful_shutdown = max(1, int(grace_seconds))
        await self.server.shutdown(sockets=[self.sock])


async def start_http(addr: str, app: Any, *, reuse_port: bool = False) -> RunningHttp:
    sock = bind_socket(addr, reuse_port=reuse_port)
    config = uvicorn.Config(
        app,
        loop="none",  # serve's loop (uvloop) is already running
        http=BoundedHttpToolsProtocol,  # httptools, with bounds on header size and time
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    port = int(sock.getsockname()[1])
    log.info("HTTP ext_authz listening", extra={"addr": addr, "port": port})
    return RunningHttp(server, sock, port)
