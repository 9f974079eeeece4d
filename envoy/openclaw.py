"""Sample OpenClaw upstream: a tiny rating API behind Envoy, for the demo and e2e tests.

It owns the HTTP/1.1 surface that Envoy proxies to (standard library only, asyncio streams):

    POST /v1/rate       {"type": "domain"|"ip"|"email", "value": "..."} -> one rating
    POST /v1/rate/bulk  {"items": [{"type": ..., "value": ...}, ...]}    -> up to 100 ratings
    GET  /healthz                                                         -> {"status": "ok"}

Scores are deterministic (sha256 of "type:normalised value"), so tests can compare them.
Every response echoes what the upstream saw, so e2e tests can prove what Envoy forwarded:
`x-seen-api-key: yes|no` (an `x-api-key` or `authorization` header arrived),
`x-seen-tenant-id` (the `x-tenant-id` it got, if any) and
`x-seen-auth-failure-mode-allowed: yes|no` (Envoy's fail-open marker).

Run: python envoy/openclaw.py --host 127.0.0.1 --port 8081   (port 0 = any free port; the
first stdout line is "openclaw listening on http://HOST:PORT").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import re
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 32 * 1024
MAX_BULK_ITEMS = 100
IDLE_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 5.0
KINDS = ("domain", "ip", "email")
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large"}  # fmt: skip

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


class BadRequest(Exception):
    """The client sent something we refuse; the message is safe to return as `error`."""

    def __init__(self, reason: str, status: int = 400, close: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.close = close  # the stream is no longer in sync: drop the connection after replying


# --- rating: validation, normalisation and the deterministic score ---------------------------


def normalise_domain(value: str) -> str:
    """Lower-cased ASCII (punycode) domain without the root dot, or BadRequest."""
    name = value.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadRequest("invalid domain") from None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise BadRequest("invalid domain")
    if labels[-1].isdigit():  # "1.2.3.4" is an IP, not a domain
        raise BadRequest("invalid domain")
    return name


def normalise_ip(value: str) -> str:
    try:
        return ipaddress.ip_address(value.strip()).compressed
    except ValueError:
        raise BadRequest("invalid ip") from None


def normalise_email(value: str) -> str:
    local, sep, domain = value.strip().rpartition("@")
    if not sep or len(local) > 64 or len(value) > 254 or not _LOCAL_PART.match(local):
        raise BadRequest("invalid email")
    try:
        return f"{local}@{normalise_domain(domain)}"
    except BadRequest:
        raise BadRequest("invalid email") from None


NORMALISERS = {"domain": normalise_domain, "ip": normalise_ip, "email": normalise_email}


def score_of(kind: str, normalised: str) -> int:
    digest = hashlib.sha256(f"{kind}:{normalised}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 101


def verdict_of(score: int) -> str:
    return "good" if score >= 70 else "neutral" if score >= 40 else "bad"


def rate_item(item: Any, tenant: str | None) -> dict[str, Any]:
    """Validate one {"type", "value"} object and rate it."""
    if not isinstance(item, dict):
        raise BadRequest("expected a JSON object")
    if set(item) != {"type", "value"}:
        raise BadRequest("expected exactly the fields 'type' and 'value'")
    kind, value = item["type"], item["value"]
    if kind not in KINDS:
        raise BadRequest("type must be one of domain, ip, email")
    if not isinstance(value, str) or not value:
        raise BadRequest("value must be a non-empty string")
    score = score_of(kind, NORMALISERS[kind](value))
    verdict = verdict_of(score)
    return {"type": kind, "value": value, "score": score, "verdict": verdict, "tenant": tenant}


def rate_bulk(payload: Any, tenant: str | None) -> dict[str, Any]:
    if not isinstance(payload, dict) or set(payload) != {"items"}:
        raise BadRequest("expected a JSON object with the field 'items'")
    items = payload["items"]
    if not isinstance(items, list) or not items:
        raise BadRequest("items must be a non-empty list")
    if len(items) > MAX_BULK_ITEMS:
        raise BadRequest(f"at most {MAX_BULK_ITEMS} items per request")
    results = []
    for index, item in enumerate(items):
        try:
            results.append(rate_item(item, tenant))
        except BadRequest as exc:
            raise BadRequest(f"items[{index}]: {exc}") from None
    return {"results": results, "count": len(results), "tenant": tenant}


# --- HTTP/1.1 -------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


@dataclass
class Response:
    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, seen: dict[str, str], keep_alive: bool) -> bytes:
        body = json.dumps(self.payload, separators=(",", ":")).encode()
        head = {
            "content-type": "application/json",
            "content-length": str(len(body)),
            "connection": "keep-alive" if keep_alive else "close",
            **seen,
            **self.headers,
        }
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Error')}"]
        lines += [f"{name}: {value}" for name, value in head.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, str, dict[str, str]] | None:
    """Request line and headers, or None when the peer closed between requests."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("truncated request", close=True) from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("header section too large", status=431, close=True) from None
    request_line, *header_lines = raw.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest("malformed request line", close=True)
    headers: dict[str, str] = {}
    for line in filter(None, header_lines):
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header", close=True)
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await read_chunked(reader)
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest("invalid content-length", close=True)
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise BadRequest(f"body over {MAX_BODY_BYTES} bytes", close=True)
    return await reader.readexactly(length)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = (await reader.readuntil(b"\r\n")).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise BadRequest("malformed chunk", close=True) from None
        if len(body) + size > MAX_BODY_BYTES:
            raise BadRequest(f"body over {MAX_BODY_BYTES} bytes", close=True)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # skip trailers
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body is not valid JSON") from None


ROUTES = {"/v1/rate": "POST", "/v1/rate/bulk": "POST", "/healthz": "GET"}


def dispatch(request: Request) -> Response:
    path = request.path.split("?", 1)[0]
    method = ROUTES.get(path)
    if method is None:
        return Response(404, {"error": "not found"})
    if request.method != method:
        return Response(405, {"error": "method not allowed"}, {"allow": method})
    if path == "/healthz":
        return Response(200, {"status": "ok"})
    tenant = request.headers.get("x-tenant-id")
    payload = parse_json(request.body)
    if path == "/v1/rate":
        return Response(200, rate_item(payload, tenant))
    return Response(200, rate_bulk(payload, tenant))


def seen_headers(headers: dict[str, str]) -> dict[str, str]:
    """What this upstream received, echoed back so tests can check what Envoy forwarded."""
    has_key = "x-api-key" in headers or "authorization" in headers
    fail_open = "x-envoy-auth-failure-mode-allowed" in headers
    seen = {"x-seen-api-key": "yes" if has_key else "no",
            "x-seen-auth-failure-mode-allowed": "yes" if fail_open else "no"}  # fmt: skip
    if "x-tenant-id" in headers:
        seen["x-seen-tenant-id"] = headers["x-tenant-id"]
    return seen


class OpenClawServer:
    """Accepts connections, serves keep-alive requests, drains on shutdown."""

    def __init__(self) -> None:
        self._idle: set[asyncio.Task[None]] = set()  # connections waiting for a request
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while not self._stopping and await self._serve_one(task, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the peer went away, or we are shutting down an idle connection
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_one(
        self, task: asyncio.Task[None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; True when the connection stays open for another."""
        self._idle.add(task)
        try:
            head = await asyncio.wait_for(read_head(reader), IDLE_TIMEOUT_S)
        except BadRequest as exc:
            return await self._reply(writer, Response(exc.status, {"error": str(exc)}), {}, False)
        except TimeoutError:
            return False
        finally:
            self._idle.discard(task)
        if head is None:
            return False
        method, path, version, headers = head
        request = Request(method, path, version, headers)
        keep_alive = request.keep_alive()
        try:
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.body = await read_body(reader, headers)
            response = dispatch(request)
        except BadRequest as exc:
            response = Response(exc.status, {"error": str(exc)})
            keep_alive = keep_alive and not exc.close
        keep_alive = keep_alive and not self._stopping
        return await self._reply(writer, response, seen_headers(headers), keep_alive)

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, response: Response, seen: dict[str, str], keep_alive: bool
    ) -> bool:
        writer.write(response.encode(seen, keep_alive))
        await writer.drain()
        return keep_alive

    async def drain(self) -> None:
        """Close idle connections now, give busy ones a grace period to finish."""
        self._stopping = True
        for task in list(self._idle):
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()


async def serve(host: str, port: int) -> None:
    app = OpenClawServer()
    server = await asyncio.start_server(app.handle, host, port, limit=MAX_HEADER_BYTES)
    bound = server.sockets[0].getsockname()
    print(f"openclaw listening on http://{host}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    await app.drain()
    print("openclaw stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sample OpenClaw rating upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
