"""uvicorn's httptools protocol with the two bounds it lacks: header size and header time.

httptools (llhttp) accepts request headers of any size, and uvicorn waits for the end of a
request's headers for ever; either lets one client hold memory or a connection without end.
Envoy never does either (its own limits are far lower), but the port must not depend on that:

- more than ``MAX_HEADER_BYTES`` before the end of a request's headers -> 431 and close;
- a request whose headers take longer than ``HEADER_TIMEOUT_S`` to arrive -> close.

An idle keep-alive connection between requests is not timed: Envoy's pool keeps those.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_S = 10.0
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _reading_headers = False
    _header_bytes = 0
    _header_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._reading_headers:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._cancel_header_timer()
                self.transport.write(_TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._header_bytes = 0
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(HEADER_TIMEOUT_S, self.transport.close)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
