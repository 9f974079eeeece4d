"""Pure factories: from settings and open connections to the objects one replica serves with.

Nothing here starts, awaits, connects or reads a file: ``runtime.py`` opens the connections,
calls these, then starts what they return in order. Tests that need a stack build it with the
same functions, so what they exercise is what ``serve`` runs.

Connections -> ``stores`` (every store once) -> ``build_replica``. The counter store a replica
decides with is a chain, outermost first:
``ExhaustedQuotaCache`` (an exhausted monthly quota is denied from memory) ->
``UsageTrackingCounters`` (tells the flusher which tenants it admitted usage for) ->
``LedgerSeededCounters`` (a month counter lost by Redis is rebuilt from the ledger before it is
used) -> ``RedisCounterStore`` (the atomic Lua script).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.config import Settings
from quotaplane.domain.audit.log import AuditLog
from quotaplane.domain.billing.admin import InvoiceAdmin, UsageReports
from quotaplane.domain.billing.invoicing import InvoiceService
from quotaplane.domain.billing.payments import PaymentWebhooks
from quotaplane.domain.billing.ports import StoredInvoice
from quotaplane.domain.billing.self_service import SelfService
from quotaplane.domain.billing.usage_events import UsageRecorder
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.registry import PlanAdmin, PlanRegistry
from quotaplane.domain.quota.decisions import Decision, DecisionCode, QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine, utc_now
from quotaplane.domain.quota.exhausted import ExhaustedQuotaCache
from quotaplane.domain.quota.gateway import Gateway
from quotaplane.domain.quota.ports import CounterStore, TenantLookup
from quotaplane.domain.tenants.admin import TenantAdmin
from quotaplane.domain.tenants.api_keys import ApiKeyAdmin
from quotaplane.integrations.notify.webhooks import HttpWebhookSender
from quotaplane.integrations.plans_file import parse_override_text, parse_plans
from quotaplane.integrations.stripe.client import StripeGateway, webhook_verifier
from quotaplane.services.counter_seeding import SEED_BUDGET, LedgerSeededCounters
from quotaplane.services.invoice_push import InvoicePusher
from quotaplane.services.key_cache import ApiKeyCache
from quotaplane.services.meter_reporter import MeterReporter
from quotaplane.services.notifier import Notifier
from quotaplane.services.period_close import (
    DEFAULT_INTERVAL,
    DEFAULT_LEASE,
    CloseObserver,
    PeriodCloser,
)
from quotaplane.services.plan_versions import PlanVersionPoller
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.services.usage_flusher import UsageFlusher, UsageTrackingCounters
from quotaplane.storage.redis.client import CommandPipe, RedisClient
from quotaplane.storage.redis.counters import RedisCounterStore
from quotaplane.storage.redis.flush import RedisQuotaCounters, RedisUnflushedUsage
from quotaplane.storage.redis.shadow import RedisShadowDenials
from quotaplane.storage.sql.api_keys import SqlApiKeyStore
from quotaplane.storage.sql.audit import SqlAuditStore
from quotaplane.storage.sql.invoice_queries import SqlInvoiceQueries
from quotaplane.storage.sql.invoices import SqlInvoiceLedger
from quotaplane.storage.sql.ledger import SqlUsageLedger
from quotaplane.storage.sql.meters import SqlMeterOutbox
from quotaplane.storage.sql.notifications import SqlNotificationStore
from quotaplane.storage.sql.outbox import SqlPushOutbox
from quotaplane.storage.sql.period_close import SqlCloseLedger
from quotaplane.storage.sql.plan_versions import SqlPlanVersionStore
from quotaplane.storage.sql.tenant_queries import SqlTenantQueries
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane.telemetry import Telemetry
from quotaplane.transport.grpc.admin import AdminServicer
from quotaplane.transport.grpc.ext_authz import AuthorizationServicer
from quotaplane.transport.grpc.quota import QuotaServicer
from quotaplane.transport.grpc.server import Servicers
from quotaplane.transport.http.authz import HttpAuthz, decision_recorder


@dataclass(frozen=True)
class Connections:
    """What one replica holds open: the ledger engine and two Redis clients."""

    database: AsyncEngine
    counters: CommandPipe  # the hot path: one pipelined connection, batched per loop tick
    redis: RedisClient  # the flush and recorded usage: may wait longer than a CheckQuota may


@dataclass(frozen=True)
class Stores:
    """Every store of one replica over its connections, each built once."""

    tenants: SqlTenantStore
    keys: SqlApiKeyStore
    usage: SqlUsageLedger
    invoices: SqlInvoiceLedger
    tenant_queries: SqlTenantQueries
    invoice_queries: SqlInvoiceQueries
    outbox: SqlPushOutbox
    notifications: SqlNotificationStore
    meters: SqlMeterOutbox
    close: SqlCloseLedger
    plan_versions: SqlPlanVersionStore
    audit: SqlAuditStore
    month_counters: RedisQuotaCounters  # usage recorded elsewhere, charged to the quota
    unflushed: RedisUnflushedUsage  # admitted usage the ledger has not taken yet
    shadow: RedisShadowDenials  # what shadow limits would have refused (GetUsage)


def stores(settings: Settings, connections: Connections) -> Stores:
    database, prefix = connections.database, settings.redis_key_prefix
    return Stores(
        tenants=SqlTenantStore(database),
        keys=SqlApiKeyStore(database),
        usage=SqlUsageLedger(database),
        invoices=SqlInvoiceLedger(database),
        tenant_queries=SqlTenantQueries(database),
        invoice_queries=SqlInvoiceQueries(database),
        outbox=SqlPushOutbox(database),
        notifications=SqlNotificationStore(database),
        meters=SqlMeterOutbox(database),
        close=SqlCloseLedger(database),
        plan_versions=SqlPlanVersionStore(database),
        audit=SqlAuditStore(database),
        month_counters=RedisQuotaCounters(connections.redis, key_prefix=prefix),
        unflushed=RedisUnflushedUsage(connections.redis, key_prefix=prefix),
        shadow=RedisShadowDenials(connections.redis, key_prefix=prefix),
    )


@dataclass(frozen=True)
class Loop:
    """A background service: ``run`` until cancelled, then ``final`` once (if any)."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    final: Callable[[], Coroutine[Any, Any, Any]] | None = None


@dataclass(frozen=True)
class Replica:
    """Everything one replica serves with, built and not yet started."""

    plans: PlanRegistry
    plan_admin: PlanAdmin
    audit: SqlAuditStore
    tenants: SqlTenantStore
    directory: TenantDirectory
    api_keys: ApiKeyCache
    flusher: UsageFlusher
    engine: QuotaEngine
    gateway: Gateway
    http_authz: HttpAuthz | None  # Envoy's HTTP ext_authz, unless QUOTAPLANE_AUTHZ_HTTP_ADDR=off
    usage: UsageRecorder
    invoices: InvoiceService
    self_service: SelfService  # GET /v1/usage: the tenant's own usage, charges and invoices
    payment_webhooks: PaymentWebhooks | None
    servicers: Servicers
    loops: tuple[Loop, ...]


def counter_store(
    settings: Settings,
    connections: Connections,
    stored: Stores,
    flusher: UsageFlusher,
    *,
    observe: Callable[[float], None] | None = None,
) -> CounterStore:
    """The counter chain of the module docstring."""
    redis = RedisCounterStore(
        connections.counters,
        key_prefix=settings.redis_key_prefix,
        timeout=settings.redis_timeout.total_seconds(),
        observe=observe,
    )
    # A seed may take as long as the caller already waits for Redis, and at least SEED_BUDGET.
    budget = max(SEED_BUDGET, settings.redis_timeout)
    seeded = LedgerSeededCounters(redis, stored.month_counters, stored.usage, budget=budget)
    return ExhaustedQuotaCache(UsageTrackingCounters(seeded, flusher.mark_dirty))


def quota_engine(
    settings: Settings,
    connections: Connections,
    stored: Stores,
    tenants: TenantLookup,
    plans: Callable[[], PlanCatalog],
    flusher: UsageFlusher,
    *,
    telemetry: Telemetry | None = None,
    observers: Sequence[Callable[[QuotaRequest, Decision], None]] = (),
) -> QuotaEngine:
    """CheckQuota's engine on the counter chain of the module docstring."""
    observe = telemetry.observe_redis if telemetry else None
    recorders = [limit_modes_recorder(telemetry)] if telemetry else []
    return QuotaEngine(
        tenants=tenants,
        plans=plans,
        counters=counter_store(settings, connections, stored, flusher, observe=observe),
        observers=[*observers, *recorders],
    )


def limit_modes_recorder(telemetry: Telemetry) -> Callable[[QuotaRequest, Decision], None]:
    """Shadow limits' would-be denials and spend-cap denials, from every transport's decisions
    (a dry run or a replay decides nothing new, so it is not counted)."""

    def record(request: QuotaRequest, decision: Decision) -> None:
        if request.dry_run or decision.replayed:
            return
        if decision.allowed:
            for name in decision.shadow_denied:
                telemetry.record_shadow_denial(request.tenant_id, name)
        elif decision.code is DecisionCode.SPEND_CAP:
            telemetry.record_spend_cap_denial(request.tenant_id, request.metric)

    return record


def usage_flusher(
    settings: Settings, stored: Stores, telemetry: Telemetry | None = None
) -> UsageFlusher:
    """Admitted usage: Redis unflushed hashes -> usage_hourly every flush interval."""
    return UsageFlusher(
        stored.unflushed,
        stored.usage,
        interval=settings.flush_interval,
        on_lag=telemetry.set_flush_lag if telemetry else None,
    )


@dataclass(frozen=True)
class CloseOptions:
    """How the period close runs; tests pass a clock they control and a slowing hook."""

    clock: Callable[[], datetime] = utc_now
    on_tenant: Callable[[str], Awaitable[None]] | None = None
    interval: timedelta = DEFAULT_INTERVAL
    lease: timedelta = DEFAULT_LEASE


def period_closer(
    settings: Settings,
    stored: Stores,
    tenants: TenantLookup,
    plans: Callable[[], PlanCatalog],
    flusher: UsageFlusher,
    *,
    telemetry: Telemetry | None = None,
    options: CloseOptions = CloseOptions(),
) -> PeriodCloser:
    """The period close of ``services/period_close.py`` over this replica's stores."""
    invoices = InvoiceService(
        tenants=tenants,
        plans=plans,
        invoices=stored.invoices,
        flush=flusher.flush_tenant,
        clock=options.clock,
        on_finalized=_record_finalized(telemetry) if telemetry else None,
    )
    observer = CloseObserver(
        invoice_closed=telemetry.record_close_invoice if telemetry else None,
        run_finished=(
            (lambda period, seconds: telemetry.record_close_run(period.end.timestamp(), seconds))
            if telemetry
            else None
        ),
    )
    return PeriodCloser(
        stored.close,
        invoices,
        stored.invoices,
        stored.usage,
        plans,
        grace=settings.billing_grace or timedelta(0),
        push_to_stripe=bool(settings.stripe_api_key),
        clock=options.clock,
        interval=options.interval,
        lease=options.lease,
        observer=observer,
        on_tenant=options.on_tenant,
    )


def build_replica(
    settings: Settings,
    connections: Connections,
    plans: PlanRegistry,
    telemetry: Telemetry,
    *,
    close: CloseOptions = CloseOptions(),
) -> Replica:
    """Stores, caches, use cases, loops and servicers of one replica, wired and not started."""
    stored = stores(settings, connections)
    tenants = stored.tenants
    directory = TenantDirectory(tenants, ttl=settings.cache_ttl)
    api_keys = ApiKeyCache(stored.keys, ttl=settings.cache_ttl)
    flusher = usage_flusher(settings, stored, telemetry)
    notifier = _notifier(settings, stored)
    engine = quota_engine(
        settings,
        connections,
        stored,
        directory,
        plans,
        flusher,
        telemetry=telemetry,
        observers=[notifier.observe] if notifier else [],
    )
    usage = UsageRecorder(
        tenants=directory,
        plans=plans,
        ledger=stored.usage,
        counters=stored.month_counters,
    )
    invoices = InvoiceService(
        tenants=directory,
        plans=plans,
        invoices=stored.invoices,
        flush=flusher.flush_tenant,
        on_finalized=_record_finalized(telemetry),
    )
    gateway = Gateway(
        api_keys,
        engine,
        on_misconfigured=telemetry.record_misconfigured,
        claims=directory if settings.jwt_tenant_claim else None,
    )
    queries = stored.tenant_queries
    plan_admin = PlanAdmin(plans, queries, stored.plan_versions, _parse_off_loop)
    plan_poller = PlanVersionPoller(stored.plan_versions, plan_admin, ttl=settings.cache_ttl)
    reports = UsageReports(
        tenants,
        stored.usage,
        flush=flusher.flush_tenant,
        shadow=stored.shadow,
        invoices=stored.invoice_queries,
    )
    servicers = Servicers(
        quota=QuotaServicer(engine, usage=usage, invoices=invoices),
        admin=AdminServicer(
            tenants=TenantAdmin(tenants, queries, plans, parse_overrides=parse_override_text),
            keys=ApiKeyAdmin(stored.keys, tenants),
            plans=plan_admin,
            usage=reports,
            invoices=InvoiceAdmin(tenants, stored.invoice_queries, stored.usage),
            audit=AuditLog(stored.audit),
        ),
        authz=AuthorizationServicer(gateway, jwt_tenant_claim=settings.jwt_tenant_claim),
    )
    loops = [
        Loop("plans version poller", plan_poller.run),
        Loop("tenant directory poller", directory.run),
        Loop("api key cache poller", api_keys.run),
        Loop("usage flusher", flusher.run, final=flusher.tick),
        *_stripe_push(settings, stored, telemetry),
        *_meter_reporter(settings, stored, plans, telemetry),
        *([Loop("quota notifier", notifier.run)] if notifier else []),
        *_period_close(settings, stored, directory, plans, flusher, telemetry, close),
    ]
    return Replica(
        plans=plans,
        plan_admin=plan_admin,
        audit=stored.audit,
        tenants=tenants,
        directory=directory,
        api_keys=api_keys,
        flusher=flusher,
        engine=engine,
        gateway=gateway,
        http_authz=_http_authz(settings, gateway, telemetry),
        usage=usage,
        invoices=invoices,
        self_service=SelfService(
            engine=engine,
            reports=reports,
            invoices=invoices,
            invoice_ledger=stored.invoices,
            invoice_queries=stored.invoice_queries,
        ),
        payment_webhooks=_payment_webhooks(settings, stored),
        servicers=servicers,
        loops=tuple(loops),
    )


def _period_close(
    settings: Settings,
    stored: Stores,
    tenants: TenantLookup,
    plans: Callable[[], PlanCatalog],
    flusher: UsageFlusher,
    telemetry: Telemetry,
    options: CloseOptions,
) -> Sequence[Loop]:
    """The period close loop, unless QUOTAPLANE_BILLING_GRACE=off."""
    if settings.billing_grace is None:
        return ()
    closer = period_closer(
        settings, stored, tenants, plans, flusher, telemetry=telemetry, options=options
    )
    return (Loop("period close", closer.run),)


async def _parse_off_loop(document: str, source: str) -> PlanCatalog:
    """Plans YAML parsed in a worker thread: a document may be 1 MiB."""
    return await asyncio.to_thread(parse_plans, document, source)


def _http_authz(settings: Settings, gateway: Gateway, telemetry: Telemetry) -> HttpAuthz | None:
    if settings.authz_http_addr == "off":
        return None
    record = decision_recorder(telemetry)
    jwt = bool(settings.jwt_tenant_claim)
    return HttpAuthz(gateway, settings.authz_routes, on_decision=record, jwt=jwt)


def _notifier(settings: Settings, stored: Stores) -> Notifier | None:
    """Quota threshold webhooks, when QUOTAPLANE_WEBHOOK_URL is set."""
    if not settings.webhook_url:
        return None
    sender = HttpWebhookSender(settings.webhook_url, settings.webhook_secret)
    return Notifier(stored.notifications, sender, thresholds=settings.notify_thresholds)


def _stripe_push(settings: Settings, stored: Stores, telemetry: Telemetry) -> Sequence[Loop]:
    """The Stripe outbox worker, when STRIPE_API_KEY is set: pushes finalized invoices."""
    if not settings.stripe_api_key:
        return ()
    gateway = StripeGateway(settings.stripe_api_key, api_base=settings.stripe_api_base or None)
    pusher = InvoicePusher(stored.outbox, gateway, on_outcome=telemetry.record_stripe_push)
    return (Loop("stripe outbox", pusher.run),)


def _meter_reporter(
    settings: Settings, stored: Stores, plans: PlanRegistry, telemetry: Telemetry
) -> Sequence[Loop]:
    """Usage of metrics priced in Stripe, as meter events, when STRIPE_API_KEY is set."""
    if not settings.stripe_api_key:
        return ()
    gateway = StripeGateway(settings.stripe_api_key, api_base=settings.stripe_api_base or None)
    reporter = MeterReporter(
        stored.meters,
        gateway,
        plans,
        interval=settings.meter_interval,
        on_outcome=telemetry.record_meter_event,
    )
    return (Loop("stripe meter reporter", reporter.run),)


def _payment_webhooks(settings: Settings, stored: Stores) -> PaymentWebhooks | None:
    """Incoming Stripe events, when QUOTAPLANE_STRIPE_WEBHOOK_ADDR is set."""
    if settings.stripe_webhook_addr == "off":
        return None
    if not settings.stripe_webhook_secret:
        raise RuntimeError("QUOTAPLANE_STRIPE_WEBHOOK_ADDR is set: STRIPE_WEBHOOK_SECRET must be")
    verifier = webhook_verifier(settings.stripe_webhook_secret)
    return PaymentWebhooks(stored.outbox, verifier)


def _record_finalized(telemetry: Telemetry) -> Callable[[StoredInvoice], None]:
    def record(invoice: StoredInvoice) -> None:
        if invoice.total_minor >= 0:  # a supplementary invoice may be a credit (late_usage.py)
            telemetry.record_invoice_total(invoice.currency, invoice.total_minor)

    return record
