"""Fail fast when ``serve``'s gRPC address cannot be bound, before anything else starts.

grpc only finds out when the server is built, after the embedded valkey, the ledger, the
caches and the usage flusher have started, and stopping those took up to 15 s (the bounded
shutdown steps). A trial bind first turns "address in use" into one line at once. It is a
check, not a reservation: a port taken in the instant between the check and grpc's own bind
still fails there, as before.
"""

from __future__ import annotations

import socket

SERVE_HINT = "is another quotaplane serve running? choose another port"


def require_bindable(addr: str, setting: str, hint: str = SERVE_HINT) -> None:
    """OSError naming ``setting`` if ``addr`` ("host:port", "[v6]:port") cannot be bound now."""
    host, _, port_text = addr.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port_text.isdigit() or int(port_text) == 0:
        return  # port 0 (any free port) or a form grpc parses itself, e.g. unix:PATH
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
    except socket.gaierror:
        return  # grpc reports an unresolvable host in its own words
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as trial:
            # As grpc does: a port in TIME_WAIT is free, one with a listener is not.
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                trial.bind(address)
            except OSError as error:
                raise OSError(
                    f"cannot listen on {addr} ({setting}): {error.strerror or error}; {hint}"
                ) from None
