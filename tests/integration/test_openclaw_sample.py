"""The sample OpenClaw upstream (envoy/openclaw.py), run as a real process on a free port."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.processes import ManagedProcess

OPENCLAW = Path(__file__).resolve().parents[2] / "envoy" / "openclaw.py"
ANNOUNCE = re.compile(r"openclaw listening on http://[^:]+:(\d+)")

pytestmark = pytest.mark.timeout(60)


def start_openclaw(log_path: Path) -> tuple[ManagedProcess, int]:
    """Start openclaw on port 0 and read back the port it announced (no free-port race)."""
    process = ManagedProcess(
        [sys.executable, str(OPENCLAW), "--host", "127.0.0.1", "--port", "0"],
        log_path=log_path,
        name="openclaw",
    ).start()
    found: list[int] = []

    def announced() -> bool:
        match = ANNOUNCE.search(process.log_tail())
        if match:
            found.append(int(match.group(1)))
        return bool(match)

    try:
        process.wait_until(announced, timeout=20, what="the listening line")
    except BaseException:
        process.close()
        raise
    return process, found[0]


@pytest.fixture(scope="module")
def openclaw_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    process, port = start_openclaw(tmp_path_factory.mktemp("openclaw") / "openclaw.log")
    try:
        yield port
    finally:
        process.close()


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection: status, lower-cased headers, decoded JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data)
    finally:
        conn.close()


def expected_score(kind: str, normalised: str) -> int:
    """The documented rule: first 8 bytes of sha256("type:normalised value") mod 101."""
    digest = hashlib.sha256(f"{kind}:{normalised}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 101


def test_healthz_answers_ok(openclaw_port: int) -> None:
    assert call(openclaw_port, "GET", "/healthz")[0] == 200


def test_rate_returns_the_documented_shape(openclaw_port: int) -> None:
    item = {"type": "domain", "value": "example.com"}
    status, _, body = call(openclaw_port, "POST", "/v1/rate", item)
    assert status == 200
    assert set(body) == {"type", "value", "score", "verdict", "tenant"}
    assert body["score"] == expected_score("domain", "example.com")
    assert body["verdict"] in {"good", "neutral", "bad"}
    assert body["tenant"] is None


@pytest.mark.parametrize(
    ("kind", "value", "normalised"),
    [
        ("domain", "Example.COM.", "example.com"),
        ("ip", "2001:DB8:0:0::1", "2001:db8::1"),
        ("ip", "192.0.2.7", "192.0.2.7"),
        ("email", "Jane.Doe+tag@Example.org", "Jane.Doe+tag@example.org"),
    ],
)
def test_scores_are_deterministic_over_normalised_values(
    openclaw_port: int, kind: str, value: str, normalised: str
) -> None:
    body = call(openclaw_port, "POST", "/v1/rate", {"type": kind, "value": value})[2]
    assert body["score"] == expected_score(kind, normalised)
    assert body["value"] == value  # echoed as sent, scored as normalised


def test_tenant_header_is_returned(openclaw_port: int) -> None:
    item = {"type": "ip", "value": "198.51.100.1"}
    _, headers, body = call(openclaw_port, "POST", "/v1/rate", item, {"x-tenant-id": "t-42"})
    assert body["tenant"] == "t-42"
    assert headers["x-seen-tenant-id"] == "t-42"


@pytest.mark.parametrize(
    ("headers", "seen"),
    [({}, "no"), ({"x-api-key": "qp_live_x"}, "yes"), ({"authorization": "Bearer x"}, "yes")],
)
def test_seen_api_key_header_reports_credentials(
    openclaw_port: int, headers: dict[str, str], seen: str
) -> None:
    assert call(openclaw_port, "GET", "/healthz", headers=headers)[1]["x-seen-api-key"] == seen


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"type": "url", "value": "x"}', "type must be one of domain, ip, email"),
        (b'{"type": "domain"}', "expected exactly the fields 'type' and 'value'"),
        (b'{"type": "domain", "value": "a", "x": 1}', "expected exactly the fields"),
        (b'{"type": "domain", "value": 7}', "value must be a non-empty string"),
        (b'{"type": "domain", "value": "-bad-.com"}', "invalid domain"),
        (b'{"type": "domain", "value": "localhost"}', "invalid domain"),
        (b'{"type": "domain", "value": "10.0.0.1"}', "invalid domain"),
        (b'{"type": "ip", "value": "300.1.1.1"}', "invalid ip"),
        (b'{"type": "ip", "value": "010.1.1.1"}', "invalid ip"),
        (b'{"type": "email", "value": "no-at-sign.example.com"}', "invalid email"),
        (b'{"type": "email", "value": "a..b@example.com"}', "invalid email"),
        (b'{"type": "email", "value": "a@nodot"}', "invalid email"),
    ],
)
def test_invalid_rate_requests_get_400_with_reason(
    openclaw_port: int, raw: bytes, reason: str
) -> None:
    status, _, body = call(openclaw_port, "POST", "/v1/rate", raw=raw)
    assert status == 400
    assert body["error"].startswith(reason)


def test_body_over_64_kib_is_refused(openclaw_port: int) -> None:
    raw = json.dumps({"type": "domain", "value": "a" * (64 * 1024)}).encode()
    status, headers, body = call(openclaw_port, "POST", "/v1/rate", raw=raw)
    assert (status, headers["connection"]) == (400, "close")
    assert "body over" in body["error"]


def bulk_items(count: int) -> dict[str, Any]:
    return {"items": [{"type": "ip", "value": f"192.0.2.{i % 250}"} for i in range(count)]}


def test_bulk_rates_every_item_in_order(openclaw_port: int) -> None:
    status, _, body = call(openclaw_port, "POST", "/v1/rate/bulk", bulk_items(100))
    assert status == 200
    assert body["count"] == 100
    assert [r["value"] for r in body["results"]] == [i["value"] for i in bulk_items(100)["items"]]
    assert body["results"][3]["score"] == expected_score("ip", "192.0.2.3")


def test_bulk_over_100_items_is_refused(openclaw_port: int) -> None:
    status, _, body = call(openclaw_port, "POST", "/v1/rate/bulk", bulk_items(101))
    assert status == 400
    assert body["error"] == "at most 100 items per request"


def test_bulk_names_the_invalid_item(openclaw_port: int) -> None:
    payload = {"items": [{"type": "ip", "value": "192.0.2.1"}, {"type": "ip", "value": "x"}]}
    status, _, body = call(openclaw_port, "POST", "/v1/rate/bulk", payload)
    assert (status, body["error"]) == (400, "items[1]: invalid ip")


def test_bulk_without_items_is_refused(openclaw_port: int) -> None:
    assert call(openclaw_port, "POST", "/v1/rate/bulk", {"items": []})[0] == 400


def test_unknown_path_is_404_and_wrong_method_405(openclaw_port: int) -> None:
    assert call(openclaw_port, "GET", "/v2/nothing")[0] == 404
    status, headers, _ = call(openclaw_port, "GET", "/v1/rate")
    assert (status, headers["allow"]) == (405, "POST")


def test_keep_alive_serves_several_requests_on_one_connection(openclaw_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", openclaw_port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("connection") == "keep-alive"
        first_socket = conn.sock
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        assert conn.sock is first_socket  # not silently reconnected
    finally:
        conn.close()


def test_chunked_request_body_is_accepted(openclaw_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", openclaw_port, timeout=10)
    try:
        chunks = iter([b'{"type": "domain", ', b'"value": "example.org"}'])
        conn.request("POST", "/v1/rate", body=chunks, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["score"] == expected_score("domain", "example.org")
    finally:
        conn.close()


def test_sigterm_stops_the_server_promptly_and_cleanly(tmp_path: Path) -> None:
    process, port = start_openclaw(tmp_path / "openclaw.log")
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        idle.request("GET", "/healthz")  # leaves an idle keep-alive connection open
        idle.getresponse().read()
        started = time.monotonic()
        assert process.terminate(timeout=10) == 0  # SIGTERM, exit code 0
        assert time.monotonic() - started < 3  # an idle client must not hold up shutdown
    finally:
        idle.close()
        process.close()
