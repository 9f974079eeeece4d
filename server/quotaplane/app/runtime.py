"""Composition root: settings -> storage -> connections -> one replica -> its loops and servers.

``Runtime`` starts an ordered list of parts, each through the same ``_start_part``, and stops
them in reverse through one AsyncExitStack, so a failure half-way through start-up still stops
whatever had started (the embedded valkey above all). The parts, in order:

1. telemetry (stops last: the scrape endpoint outlives the drain)
2. storage: the data directory lock, the embedded valkey and the SQLite ledger when no URLs
   are configured, else a check that the ledger schema is current
3. connections: the ledger engine and the two Redis clients
4. the replica (``wiring.build_replica``, pure), its caches warmed from the ledger
5. its loops (pollers, the usage flusher, the Stripe outbox, the notifier)
6. servers: the Stripe webhook receiver, the gRPC server, then Envoy's HTTP ext_authz with
   the tenant's /v1/usage and /portal behind it (stops first, draining checks)

What the tests and ``serve`` read of a running Runtime is in ``Running``; before start and
after stop there is none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.app.billing_parts import CloseOptions
from quotaplane.app.credentials import Tokens, resolve_tokens
from quotaplane.app.embedded import start_embedded
from quotaplane.app.loop import Loop
from quotaplane.app.shutdown import push_bounded
from quotaplane.app.stores import Connections
from quotaplane.app.wiring import Replica, build_replica
from quotaplane.config import Settings
from quotaplane.domain.plans.registry import PlanRegistry
from quotaplane.integrations.plans_file import parse_plans, read_plans_text
from quotaplane.integrations.stripe.webhooks import start_webhook_server
from quotaplane.storage.redis.client import command_pipe, redis_client
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane.telemetry import Telemetry
from quotaplane.transport.grpc.observability import Observability
from quotaplane.transport.grpc.server import RunningServer, start_server
from quotaplane.transport.grpc.tls import server_credentials
from quotaplane.transport.http.server import RunningHttp, start_http
from quotaplane.transport.http.tenant_api import HttpSite, TenantApi

log = logging.getLogger(__name__)

FINAL_STEP_TIMEOUT_S = 5.0  # a loop's last step after cancel (the final usage flush)


def default_plans_path() -> Path:
    return Path(str(resources.files("quotaplane") / "default_plans.yaml"))


@dataclass(frozen=True)
class Storage:
    """Where the counters and the ledger are, and each role's token, once storage is up."""

    redis_url: str
    database_url: str
    tokens: Tokens


@dataclass(frozen=True)
class Running:
    """A started Runtime: what ``serve`` logs and tests reach into."""

    storage: Storage
    connections: Connections
    replica: Replica
    telemetry: Telemetry
    grpc: RunningServer
    http: RunningHttp | None
    metrics_port: int | None
    webhook_port: int | None


class Runtime:
    """Everything ``quotaplane serve`` runs, as one async context manager."""

    def __init__(self, settings: Settings, *, close: CloseOptions | None = None) -> None:
        """``close``: the period close's clock and hooks (tests control them)."""
        self.settings = settings
        self._close = close or CloseOptions()
        self._running: Running | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def running(self) -> Running:
        if self._running is None:
            raise RuntimeError("the runtime is not running")
        return self._running

    # What tests and the serve log read most, by their usual names.
    @property
    def grpc(self) -> RunningServer:
        return self.running.grpc

    @property
    def database(self) -> AsyncEngine:
        return self.running.connections.database

    @property
    def tenants(self) -> SqlTenantStore:
        return self.running.replica.tenants

    @property
    def telemetry(self) -> Telemetry:
        return self.running.telemetry

    @property
    def tokens(self) -> Tokens:
        return self.running.storage.tokens

    @property
    def metrics_port(self) -> int | None:
        return self.running.metrics_port

    @property
    def webhook_port(self) -> int | None:
        return self.running.webhook_port

    async def __aenter__(self) -> Runtime:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._running = None
        await self._stack.aclose()

    async def _start(self) -> None:
        plans = self._plan_registry()
        telemetry, metrics_port = await self._start_telemetry()
        storage = await self._start_storage()
        connections = self._connect(storage)
        replica = build_replica(self.settings, connections, plans, telemetry, close=self._close)
        await self._bootstrap_plans(replica)
        # Warm: the first request must not wait for a poll interval to know its tenant or key.
        await replica.directory.refresh()
        await replica.api_keys.refresh()
        for loop in replica.loops:
            self._start_loop(loop)
        webhook_port = await self._start_payment_webhooks(replica)
        grpc = await self._start_grpc(replica, storage, telemetry)
        http = await self._start_http_authz(replica, storage)
        self._running = Running(
            storage, connections, replica, telemetry, grpc, http, metrics_port, webhook_port
        )

    def _start_part(self, name: str, stop: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Every part registers its stop here: bounded, in reverse start order."""
        push_bounded(self._stack, name, stop, *args)

    def _plans_path(self) -> Path:
        return self.settings.plans_path or default_plans_path()

    def _plan_registry(self) -> PlanRegistry:
        """The plans file, validated before anything starts; the ledger's newest version
        replaces it at ``_bootstrap_plans``."""
        path = self._plans_path()
        catalog = parse_plans(read_plans_text(path), str(path))
        read = functools.partial(asyncio.to_thread, read_plans_text, path)
        return PlanRegistry(catalog, read=read, lock=asyncio.Lock(), file_source=str(path))

    async def _bootstrap_plans(self, replica: Replica) -> None:
        """QUOTAPLANE_PLANS applied as a version when it differs from the newest one (the
        packaged default only to an empty ledger), then the newest version served."""
        path = self._plans_path()
        text = await asyncio.to_thread(read_plans_text, path)
        configured = self.settings.plans_path is not None
        applied = await replica.plan_admin.bootstrap(text, str(path), configured=configured)
        catalog = replica.plans.current
        log.info(
            "plans loaded",
            extra={
                "version": catalog.version,
                "applied_now": applied is not None,
                "source": catalog.source,
                "plans": sorted(catalog.plans),
            },
        )

    async def _start_telemetry(self) -> tuple[Telemetry, int | None]:
        """Metric instruments and tracer first, so every later part can record; the scrape
        endpoint stops last (after the gRPC server has drained)."""
        s = self.settings
        telemetry = Telemetry(tenant_labels=s.metrics_tenant_labels, traces=s.traces)
        # Off the event loop: stopping the HTTP thread waits for its poll interval.
        self._start_part("telemetry", asyncio.to_thread, telemetry.shutdown)
        port = None
        if s.metrics_addr != "off":
            port = await asyncio.to_thread(telemetry.start_http, s.metrics_addr)
        return telemetry, port

    async def _start_storage(self) -> Storage:
        """The embedded defaults where no URL is configured; the schema check where one is."""
        s = self.settings
        redis_url, database_url = start_embedded(s, self._stack)
        if s.database_url:
            await asyncio.to_thread(_require_current_schema, database_url)
        return Storage(redis_url, database_url, resolve_tokens(s))

    def _connect(self, storage: Storage) -> Connections:
        timeout = self.settings.redis_timeout.total_seconds()
        counters = command_pipe(storage.redis_url, timeout=timeout)
        self._start_part("redis counters pipe", counters.aclose)
        database: AsyncEngine = create_async_engine_for(storage.database_url)
        self._start_part("ledger engine", database.dispose)
        # The flush is off the hot path: it may wait longer than a CheckQuota may.
        redis = redis_client(storage.redis_url, timeout=max(1.0, timeout))
        self._start_part("redis flush client", redis.aclose)
        return Connections(database=database, counters=counters, redis=redis)

    def _start_loop(self, loop: Loop) -> None:
        task = asyncio.create_task(loop.run(), name=loop.name)
        self._start_part(loop.name, _stop_loop, task, loop)

    async def _start_payment_webhooks(self, replica: Replica) -> int | None:
        """POST /stripe/webhook, when QUOTAPLANE_STRIPE_WEBHOOK_ADDR is set."""
        if replica.payment_webhooks is None:
            return None
        addr = self.settings.stripe_webhook_addr
        server = await start_webhook_server(addr, replica.payment_webhooks.receive)
        self._start_part("stripe webhook server", server.close)
        return server.port

    async def _start_grpc(
        self, replica: Replica, storage: Storage, telemetry: Telemetry
    ) -> RunningServer:
        s = self.settings
        grpc = await start_server(
            s.grpc_addr,
            replica.servicers,
            admin_token=storage.tokens.admin,
            service_token=storage.tokens.service,
            billing_token=storage.tokens.billing,
            max_concurrent_streams=s.max_concurrent_streams,
            credentials=server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca),
            wrappers=[Observability(telemetry).wrap],
            reuse_port=s.reuse_port,
            audit=replica.audit,
        )
        grace = s.shutdown_grace.total_seconds()
        push_bounded(self._stack, "grpc server", grpc.stop, grace, limit=grace + 5)
        return grpc

    async def _start_http_authz(self, replica: Replica, storage: Storage) -> RunningHttp | None:
        """Envoy's HTTP ext_authz (the fast path), and behind it the tenant's /v1/usage and
        /portal, unless QUOTAPLANE_AUTHZ_HTTP_ADDR is off. Started after the gRPC server, so
        stopped first: Envoy's checks drain before the rest."""
        s = self.settings
        if replica.http_authz is None:
            return None
        tenant = TenantApi(replica.self_service, proxy_token=storage.tokens.service)
        site = HttpSite(replica.http_authz.answer, tenant)
        http = await start_http(s.authz_http_addr, site.answer, reuse_port=s.reuse_port)
        grace = s.shutdown_grace.total_seconds()
        push_bounded(self._stack, "http ext_authz", http.stop, grace, limit=grace + 5)
        return http


async def _stop_loop(task: asyncio.Task[None], loop: Loop) -> None:
    """Cancel the loop, then run its final step (a clean stop leaves no usage behind)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if loop.final is None:
        return
    try:
        async with asyncio.timeout(FINAL_STEP_TIMEOUT_S):
            await loop.final()
    except Exception as error:  # what is left waits in Redis for the next replica's sweep
        log.warning("%s: final step incomplete: %s", loop.name, error)


def _require_current_schema(url: str) -> None:
    current, head = migrate.current(url), migrate.head()
    if current != head:
        raise RuntimeError(
            f"ledger schema is at {current or 'nothing'}, this build needs {head}: "
            "run `quotaplane db upgrade` first"
        )
