"""A stateful local Stripe API (v1) server for tests, driven by the real `stripe` SDK.

Owns the request pipeline: bearer-key auth, the request log, fault injection and the
idempotency layer. Sockets live in `tests.fakes.stripe.http_server` (a ThreadingHTTPServer
on 127.0.0.1), the objects in `tests.fakes.stripe.store`.
Point the SDK at it with
`stripe.StripeClient(emu.api_key, base_addresses={"api": emu.start()})`.

A request passes, in order: auth (401) -> parameter decoding (400) -> an armed injected error
(answered before the endpoint runs, so nothing is executed or stored, like Stripe's rate
limiter) -> routing (404) -> the idempotency key (replay, 400 `idempotency_error`, 409 in
flight) -> an armed hold -> the endpoint, atomically under the store lock -> an armed drop
(the result is committed and stored, then the connection is closed unanswered).
Billing Meters (meters, meter events with identifier dedup, event summaries) are served by
`tests.fakes.stripe.meters`; `fail_next(status=429, path_prefix="/v1/billing/meter_events")`
and `drop_response_after_commit_next(path_prefix=...)` fault them like any endpoint.
Scope: one test-mode account; idempotency keys are scoped per API key, objects are not.
"""

from __future__ import annotations

import base64
import copy
import sys
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tests.fakes.stripe.faults import FaultPlan, Hold, InjectedError
from tests.fakes.stripe.http_server import EmulatorHTTPServer, Headers
from tests.fakes.stripe.idempotency import IdempotencyCache, StoredResponse
from tests.fakes.stripe.meters import MeterEvent
from tests.fakes.stripe.routes import Handler, resolve
from tests.fakes.stripe.shapes import public
from tests.fakes.stripe.store import Store
from tests.fakes.stripe.webhooks import event_payload, sign_webhook
from tests.fakes.stripe.wire import JSON, StripeError, encode_json, new_id, parse_form

__all__ = ["Hold", "MeterEvent", "RequestRecord", "StripeEmulator", "event_payload", "sign_webhook"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it. `status` is what it answered, or would have
    answered when `dropped` (the client then saw only a closed connection)."""

    method: str
    path: str
    idempotency_key: str | None
    status: int
    stripe_version: str | None
    replayed: bool = False
    dropped: bool = False
    injected: bool = False


@dataclass
class _Reply:
    status: int
    body: bytes
    request_id: str = field(default_factory=lambda: new_id("req"))
    headers: dict[str, str] = field(default_factory=dict)
    stored: bool = True  # whether the idempotency layer keeps this result
    replayed: bool = False
    injected: bool = False

    @classmethod
    def error(cls, err: StripeError, **kwargs: Any) -> _Reply:
        return cls(err.status, encode_json(err.body()), stored=err.stored, **kwargs)


class StripeEmulator:
    """Start with `start()` (or `with StripeEmulator() as emu:`), always `stop()`."""

    def __init__(self, api_key: str = "sk_test_emulator", *, hold_timeout: float = 10.0) -> None:
        self.api_key = api_key
        self._hold_timeout = hold_timeout
        self._clock_offset = 0.0
        self._store = Store(lambda: int(self._now()))
        self._idempotency = IdempotencyCache(self._now)
        self._faults = FaultPlan()
        self._log_lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._slow: tuple[float, str, str | None] = (0.0, "/", None)
        self._page_cap: int | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> str:
        """Listen on a free port of 127.0.0.1 and return the api_base for the SDK."""
        if self._server is not None:
            raise RuntimeError("StripeEmulator already started")
        self._server = EmulatorHTTPServer(self._dispatch)
        self._thread = threading.Thread(
            # A short poll interval makes stop() quick: tests start one emulator each.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-emulator",
            daemon=True,
        )
        self._thread.start()
        return self.api_base

    def stop(self) -> None:
        """Stop serving, cut open keep-alive connections and release held requests."""
        server, self._server = self._server, None
        if server is None:
            return
        self._faults.release_all()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StripeEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def api_base(self) -> str:
        if self._server is None:
            raise RuntimeError("StripeEmulator is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- fault injection and time --------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        path_prefix: str = "/",
        retry_after: int | None = None,
        should_retry: bool | None = None,
        query_contains: str = "",
    ) -> None:
        """Answer the next `n` matching requests with `status` before running them.

        `retry_after` sets `Retry-After`; `should_retry` sets `Stripe-Should-Retry`. (The
        Python SDK v16 ignores Retry-After and retries a 429 only with Stripe-Should-Retry:
        true; it retries 409 and 5xx by itself.) ``query_contains`` narrows the match to
        requests whose query string contains it (``starting_after``: a list's later pages).
        """
        fault = InjectedError(status, retry_after, should_retry)
        self._faults.add_error(n, path_prefix, fault, query_contains)

    def drop_response_after_commit_next(self, n: int = 1, *, path_prefix: str = "/") -> None:
        """Run the next `n` matching requests, store their results, close without answering."""
        self._faults.add_drop(n, path_prefix)

    def hold_next(self, path_prefix: str = "/") -> Hold:
        """Park the next matching request inside its endpoint until `hold.release()`."""
        return self._faults.add_hold(path_prefix)

    def slow_down(
        self, seconds: float, *, path_prefix: str = "/", method: str | None = None
    ) -> None:
        """Answer every later matching request only after ``seconds`` (a slow Stripe API)."""
        self._slow = (seconds, path_prefix, method)

    def cap_page_size(self, rows: int) -> None:
        """Answer lists with at most ``rows`` rows per page, whatever ``limit`` asks (Stripe
        may), so a client has to follow ``has_more``."""
        self._page_cap = rows

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock (object timestamps, idempotency key expiry) forward."""
        self._clock_offset += seconds

    def _now(self) -> float:
        return time.time() + self._clock_offset

    # -- inspection (deep copies, taken atomically) --------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._log)

    @property
    def customers(self) -> list[JSON]:
        with self._store.lock:
            return [copy.deepcopy(public(c)) for c in self._store.customers.values()]

    def invoices_for(self, customer_id: str) -> list[JSON]:
        with self._store.lock:
            return [
                copy.deepcopy(self._store.render_invoice(inv))
                for inv in self._store.invoices.values()
                if inv["customer"] == customer_id
            ]

    def invoice_items_for(self, invoice_id: str) -> list[JSON]:
        with self._store.lock:
            return [copy.deepcopy(public(i)) for i in self._store.items_of(invoice_id)]

    @property
    def meter_events(self) -> list[MeterEvent]:
        """Every meter event accepted (an identifier refused as a duplicate is not here)."""
        with self._store.lock:
            return list(self._store.metering.events)

    def invoice(self, invoice_id: str) -> JSON:
        with self._store.lock:
            return copy.deepcopy(self._store.render_invoice(self._store.invoices[invoice_id]))

    # -- request pipeline ----------------------------------------------------------------

    def _dispatch(
        self, method: str, target: str, headers: Headers, body: bytes
    ) -> tuple[_Reply, bool]:
        """The reply for one request and whether to drop it instead of answering."""
        path, _, query = target.partition("?")
        key = headers.get("Idempotency-Key") if method == "POST" else None
        delay, prefix, slow_method = self._slow
        if path.startswith(prefix) and slow_method in (None, method):
            time.sleep(delay)  # each request has its own thread (ThreadingHTTPServer)
        if method == "GET" and self._page_cap is not None:
            query = _capped_limit(query, self._page_cap)
        reply, executed = self._reply(method, path, query, headers, body, key)
        dropped = executed and self._faults.take_drop(path)
        reply.headers.update(_standard_headers(reply, headers, key))
        with self._log_lock:
            self._log.append(
                RequestRecord(
                    method,
                    path,
                    key,
                    reply.status,
                    headers.get("Stripe-Version"),
                    replayed=reply.replayed,
                    dropped=dropped,
                    injected=reply.injected,
                )
            )
        return reply, dropped

    def _reply(
        self,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        body: bytes,
        key: str | None,
    ) -> tuple[_Reply, bool]:
        api_key = _bearer_key(headers.get("Authorization") or "")
        if api_key is None:
            return _Reply.error(_auth_error(headers.get("Authorization") or "")), False
        try:
            params = parse_form(body.decode("utf-8") if method == "POST" else query)
        except (StripeError, UnicodeDecodeError) as exc:
            err = exc if isinstance(exc, StripeError) else StripeError(400, "Invalid body")
            return _Reply.error(err), False
        injected = self._faults.take_error(path, query)
        if injected is not None:
            return _Reply.error(injected.error(), headers=injected.headers(), injected=True), False
        found = resolve(method, path)
        if found is None:
            return _Reply.error(
                StripeError(404, f"Unrecognized request URL ({method}: {path}).")
            ), False
        if key is None:
            reply = self._execute(found[0], params, found[1], path)
            return reply, reply.stored
        return self._execute_idempotently(api_key, key, method, path, params, found)

    def _execute_idempotently(
        self,
        api_key: str,
        key: str,
        method: str,
        path: str,
        params: JSON,
        found: tuple[Handler, str],
    ) -> tuple[_Reply, bool]:
        try:
            stored = self._idempotency.begin(api_key, key, f"{method} {path}", params)
        except StripeError as err:
            return _Reply.error(err), False
        if stored is not None:
            return _replay(stored), False
        outcome: _Reply | None = None
        try:
            outcome = self._execute(found[0], params, found[1], path)
        finally:
            # Only a result of an endpoint that started executing is kept for replay.
            if outcome is not None and outcome.stored:
                self._idempotency.complete(
                    api_key, key, StoredResponse(outcome.status, outcome.body, outcome.request_id)
                )
            else:
                self._idempotency.abandon(api_key, key)
        return outcome, outcome.stored

    def _execute(self, handler: Handler, params: JSON, object_id: str, path: str) -> _Reply:
        hold = self._faults.take_hold(path)
        if hold is not None:
            hold.entered.set()
            hold.released.wait(self._hold_timeout)
        try:
            with self._store.lock:
                result = handler(self._store, params, object_id)
        except StripeError as err:
            return _Reply.error(err)
        except Exception:  # an emulator bug: answer like Stripe's 500 and show the trace
            traceback.print_exc(file=sys.stderr)
            return _Reply.error(StripeError(500, "Internal emulator error", type_="api_error"))
        return _Reply(200, encode_json(result))


def _capped_limit(query: str, cap: int) -> str:
    """The query with its ``limit`` (a list's page size), if any, lowered to ``cap``."""
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return urllib.parse.urlencode(
        [(k, str(min(int(v), cap)) if k == "limit" else v) for k, v in pairs]
    )


def _replay(stored: StoredResponse) -> _Reply:
    reply = _Reply(stored.status, stored.body, replayed=True)
    reply.headers["Idempotent-Replayed"] = "true"
    reply.headers["Original-Request"] = stored.request_id
    return reply


def _bearer_key(authorization: str) -> str | None:
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() == "basic":  # curl -u sk_test_...:
        try:
            credential = base64.b64decode(credential).decode("utf-8").partition(":")[0]
        except ValueError:
            return None
    elif scheme.lower() != "bearer":
        return None
    return credential if credential.startswith("sk_test_") else None


def _auth_error(authorization: str) -> StripeError:
    credential = authorization.partition(" ")[2]
    if not credential:
        message = "You did not provide an API key."
    else:
        message = f"Invalid API Key provided: {credential[:8]}{'*' * 8}{credential[-4:]}"
    return StripeError(401, message)


def _standard_headers(reply: _Reply, headers: Headers, key: str | None) -> dict[str, str]:
    standard = {"Content-Type": "application/json", "Request-Id": reply.request_id}
    version = headers.get("Stripe-Version")
    if version:
        standard["Stripe-Version"] = version
    if key is not None:
        standard["Idempotency-Key"] = key
    return standard
