"""An always-allow Envoy HTTP ext_authz server on a raw asyncio Protocol + httptools (uvloop).

The floor for the HTTP path in bench/envoy_load.py: it parses each check with httptools and
answers 200 with the same headers quotaplane sends on an admitted request (x-tenant-id, the
rate-limit headers, x-envoy-auth-headers-to-remove), doing nothing else. Answers are written
in request order (pipelining-safe: each is written as soon as its request is parsed).

    python bench/trivial_http_authz.py --host 127.0.0.1 --port 0

prints "trivial-http-authz listening on HOST:PORT", stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import httptools
import uvloop

ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"x-tenant-id: t-bench\r\n"
    b"x-ratelimit-limit: 1000\r\n"
    b"x-ratelimit-remaining: 999\r\n"
    b"x-envoy-auth-headers-to-remove: x-api-key,authorization\r\n"
    b"content-length: 0\r\n\r\n"
)


class AlwaysAllow(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(ANSWER)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AlwaysAllow, host, port, backlog=2048)
    bound = server.sockets[0].getsockname()[1]
    print(f"trivial-http-authz listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
