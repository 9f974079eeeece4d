"""The HTTP/1.1 server of the HTTP ext_authz: an asyncio Protocol on httptools (llhttp).

Hand-written because the figures asked for it (bench/RESULTS.md, "HTTP ext_authz"): uvicorn
spent ~40% more CPU per check than this, mostly in per-request ASGI machinery this endpoint does
not need. It serves one thing, Envoy's checks, and stays small:

- keep-alive and pipelining: every request of a connection gets a task at once (so the Redis
  scripts of one loop tick share one write), and answers are written in request order;
- at most ``MAX_PIPELINED`` unanswered requests per connection: reading pauses beyond that;
- request headers over ``MAX_HEADER_BYTES`` -> 431 and close; malformed requests -> 400 and
  close; headers that take over ``HEADER_TIMEOUT_S`` to arrive -> close (an idle keep-alive
  connection between requests is left alone: Envoy's pool keeps those);
- request bodies are read and dropped (Envoy sends none unless told to);
- a failing answer -> 500, so Envoy's failure mode decides.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import httptools

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]
Answerer = Callable[[str, Headers], Coroutine[Any, Any, Answer]]

MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_S = 10.0
MAX_PIPELINED = 64
_STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus
}
_INTERNAL_ERROR: Answer = (500, [], b"")


def _refusal(status: int) -> bytes:
    return _STATUS_LINES[status] + b"content-length: 0\r\nconnection: close\r\n\r\n"


class Connections:
    """The open connections of one listener; ``empty`` is set while there are none."""

    def __init__(self) -> None:
        self.open: set[AuthzProtocol] = set()
        self.empty = asyncio.Event()
        self.empty.set()

    def add(self, connection: AuthzProtocol) -> None:
        self.open.add(connection)
        self.empty.clear()

    def discard(self, connection: AuthzProtocol) -> None:
        self.open.discard(connection)
        if not self.open:
            self.empty.set()


def encode_answer(answer: Answer, keep_alive: bool) -> bytes:
    status, headers, body = answer
    parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"content-length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += [b"\r\n", body]
    return b"".join(parts)


class AuthzProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, answer: Answerer, connections: Connections) -> None:
        self._answer = answer
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: collections.deque[tuple[asyncio.Task[Answer], bool]] = collections.deque()
        self._url = b""
        self._headers: Headers = []
        self._in_headers = True  # the next bytes start a request's headers
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._paused = False  # reading paused: too many unanswered requests
        self.closing = False

    @property
    def idle(self) -> bool:
        return not self._pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._cancel_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(431)
                return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._refuse(400)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._headers = b"", []
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(HEADER_TIMEOUT_S, self.close)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()

    def on_message_complete(self) -> None:
        # The request target (path and query): the answerer splits it (``tenant_api.HttpSite``).
        target = self._url.decode("latin-1")
        task = asyncio.get_running_loop().create_task(self._answer(target, self._headers))
        self._pending.append((task, self._parser.should_keep_alive()))
        task.add_done_callback(self._flush)
        self._in_headers, self._header_bytes = True, 0
        if len(self._pending) >= MAX_PIPELINED and not self._paused and self._transport:
            self._transport.pause_reading()
            self._paused = True

    # answers, in request order

    def _flush(self, _: object = None) -> None:
        while self._pending and self._pending[0][0].done():
            task, keep_alive = self._pending.popleft()
            self._write(_result(task), keep_alive and not self.closing)
            if not keep_alive or self.closing:
                self.close()
                return
        if self._paused and len(self._pending) <= MAX_PIPELINED // 2 and self._transport:
            self._transport.resume_reading()
            self._paused = False

    def _write(self, answer: Answer, keep_alive: bool) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_answer(answer, keep_alive))

    def _refuse(self, status: int) -> None:
        """Answer ``status`` and close; behind pending answers, just close after them."""
        transport = self._transport
        if self.idle and transport is not None and not transport.is_closing():
            transport.write(_refusal(status))
        self.close()

    def close(self) -> None:
        """Close now if nothing is pending, else after the last pending answer."""
        self.closing = True
        self._cancel_header_timer()
        if self._transport is not None and self.idle:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


def _result(task: asyncio.Task[Answer]) -> Answer:
    if task.cancelled():
        return _INTERNAL_ERROR
    if (error := task.exception()) is not None:
        log.error("HTTP ext_authz answer failed", exc_info=error)
        return _INTERNAL_ERROR
    return task.result()
