"""The Stripe webhook endpoint: ``POST /stripe/webhook`` on a small asyncio HTTP/1.1 server.

Only what Stripe's deliveries need: one request per connection, a body of at most 1 MiB with
a Content-Length, a bounded read time. The body and ``Stripe-Signature`` go to ``receive``
(``PaymentWebhooks.receive``), and the answer tells Stripe what to do: 200 (handled, also for
a repeated event), 400 (bad signature or request: do not retry), 503 (the ledger is down:
retry later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from quotaplane.domain.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

PATH = "/stripe/webhook"
MAX_BODY = 1 << 20
READ_TIMEOUT_S = 10.0
Receive = Callable[[bytes, str], Awaitable[bool]]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


@dataclass
class WebhookServer:
    server: asyncio.Server
    port: int

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_webhook_server(addr: str, receive: Receive) -> WebhookServer:
    """Listen on ``host:port`` (port 0: any free port)."""
    host, _, port = addr.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status = await _answer(reader, receive)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status = 400
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host.strip("[]"), int(port))
    bound = server.sockets[0].getsockname()[1]
    log.info("stripe webhook endpoint listening", extra={"addr": f"{host}:{bound}{PATH}"})
    return WebhookServer(server, int(bound))


async def _answer(reader: asyncio.StreamReader, receive: Receive) -> int:
    async with asyncio.timeout(READ_TIMEOUT_S):
        method, path, headers = await _head(reader)
        if method != "POST" or path.split("?", 1)[0] != PATH:
            return 404
        length = int(headers.get("content-length", "-1"))
        if not 0 <= length <= MAX_BODY:
            return 413
        body = await reader.readexactly(length)
    try:
        await receive(body, headers.get("stripe-signature", ""))
    except InvalidArgument as error:
        log.warning("stripe webhook rejected: %s", error.message)
        return 400
    except Unavailable as error:
        log.warning("stripe webhook postponed: %s", error.message)
        return 503
    except Exception:
        log.exception("stripe webhook failed")
        return 500
    return 200


async def _head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    request_line = (await reader.readuntil(b"\r\n")).decode("latin-1").split()
    if len(request_line) != 3:
        raise ValueError("malformed request line")
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
        if len(headers) > 100:
            raise ValueError("too many headers")
    return request_line[0], request_line[1], headers
