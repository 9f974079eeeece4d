"""The emulator's HTTP/1.1 transport: a ThreadingHTTPServer on a free port of 127.0.0.1.

Owns sockets only: it reads each request, hands it to a dispatch function, and writes the
reply or, when told to drop it, closes the connection unanswered. It tracks open
connections so that stopping also cuts the SDK's idle keep-alive connections.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import SHUT_RDWR, socket
from typing import Any, Protocol


class Headers(Protocol):
    """Case-insensitive header lookup (an http.server `Message`)."""

    def get(self, name: str, /) -> str | None: ...


class Answer(Protocol):
    status: int
    headers: dict[str, str]
    body: bytes


# (method, path with query, headers, body) -> (reply, drop the connection instead)
Dispatch = Callable[[str, str, Headers, bytes], tuple[Answer, bool]]


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dispatch: Dispatch) -> None:
        self.dispatch = dispatch
        self._connections: set[socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RequestHandler)

    def track(self, connection: socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        # A stopped emulator must not keep answering on the SDK's keep-alive connections.
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's requests session expects
    timeout = 60  # idle keep-alive connections give their thread back
    server: EmulatorHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply, drop = self.server.dispatch(self.command, self.path, self.headers, body)
        if drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the emulator's request log replaces stderr chatter
