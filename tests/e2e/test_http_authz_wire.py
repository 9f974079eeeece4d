"""The HTTP ext_authz listener on the wire (transport/http/protocol.py) with odd clients.

Envoy is the only intended client, but the port must survive anything: pipelined requests
are answered in order, malformed and oversized requests get a 4xx (or a close) and nothing
else is disturbed, and a client that trickles its headers holds no one else up.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotaplane.transport.http.protocol import HEADER_TIMEOUT_S
from tests.harness.gateway import request
from tests.harness.quotaplane_server import ServeProcess, start_serve

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir: Path = tmp_path_factory.mktemp("wire")
    serve = start_serve(workdir, env={"QUOTAPLANE_METRICS_ADDR": "off"})
    with serve.process:
        serve.process.wait_for_port(serve.http_port, timeout=60)
        yield serve


def _connect(serve: ServeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", serve.http_port), timeout=10)


def _read_until_closed_or(sock: socket.socket, count: int) -> bytes:
    data = b""
    while data.count(b"HTTP/1.1 ") < count or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_pipelined_requests_are_answered_in_order(server: ServeProcess) -> None:
    with _connect(server) as sock:
        one = b"GET /v1/rate HTTP/1.1\r\nhost: a\r\nx-api-key: %b\r\n\r\n"
        sock.sendall(one % b"" + one % b"qp_live_x" + one % b"")
        data = _read_until_closed_or(sock, 3)
    bodies = [part for part in data.split(b"HTTP/1.1 ")[1:]]
    assert [body[:3] for body in bodies] == [b"401"] * 3
    assert [b"missing API key" in body for body in bodies] == [True, False, True]


def test_hundreds_of_pipelined_requests_all_get_their_answer_in_order(
    server: ServeProcess,
) -> None:
    keys = [b"" if i % 3 else b"qp_live_x" for i in range(300)]  # more than MAX_PIPELINED
    with _connect(server) as sock:
        sock.sendall(b"".join(b"GET /v1/rate HTTP/1.1\r\nx-api-key: %b\r\n\r\n" % k for k in keys))
        data = _read_until_closed_or(sock, len(keys))
        sock.sendall(b"GET /v1/rate HTTP/1.1\r\n\r\n")  # reading resumed after the burst
        after = _read_until_closed_or(sock, 1)
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == len(keys)
    assert [b"missing API key" in a for a in answers] == [not k for k in keys]
    assert after.startswith(b"HTTP/1.1 401")


def test_a_body_is_ignored_and_connection_close_is_honoured(server: ServeProcess) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/rate HTTP/1.1\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        )
        data = b""
        while chunk := sock.recv(65536):  # the server closes after its answer
            data += chunk
    assert data.startswith(b"HTTP/1.1 401") and b"connection: close" in data.lower()


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /v1/rate HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET /v1/rate HTTP/1.1\r\nhost: a\r\ncontent-length: -5\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_the_server_goes_on(
    server: ServeProcess, raw: bytes
) -> None:
    with _connect(server) as sock:
        sock.sendall(raw)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400")
    assert request(server.http_port, "GET", "/v1/rate")[0] == 401


def test_oversized_headers_are_refused_and_the_server_goes_on(server: ServeProcess) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /v1/rate HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n")
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert answer.startswith(b"HTTP/1.1 431")
    assert request(server.http_port, "GET", "/v1/rate")[0] == 401


def test_a_request_whose_headers_never_end_is_closed(server: ServeProcess) -> None:
    with _connect(server) as sock:
        sock.settimeout(HEADER_TIMEOUT_S + 10)
        sock.sendall(b"GET /v1/rate HTTP/1.1\r\nhost: a\r\n")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, not by this test's timeout
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 5


def test_a_client_trickling_its_headers_holds_no_one_up(server: ServeProcess) -> None:
    slow = [_connect(server) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(b"GET /v1/rate HTTP/1.1\r\nhost: a\r\n")  # and never the end
        for _ in range(10):
            assert request(server.http_port, "GET", "/v1/rate")[0] == 401
    finally:
        for sock in slow:
            sock.close()
