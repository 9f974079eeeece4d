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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quotaplane.app.billing_parts import (
    DEFAULT_CLOSE,
    CloseOptions,
    meter_reporter_loops,
    payment_webhooks,
    period_close_loops,
    record_finalized,
    stripe_push_loops,
)
from quotaplane.app.loop import Loop
from quotaplane.app.stores import Connections, Stores, stores
from quotaplane.config import Settings
from quotaplane.domain.audit.log import AuditLog
from quotaplane.domain.billing.admin import InvoiceAdmin, UsageReports
from quotaplane.domain.billing.invoicing import InvoiceService
from quotaplane.domain.billing.payments import PaymentWebhooks
from quotaplane.domain.billing.self_service import SelfService
from quotaplane.domain.billing.usage_events import UsageRecorder
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.registry import PlanAdmin, PlanRegistry
from quotaplane.domain.quota.decisions import Decision, DecisionCode, QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.domain.quota.exhausted import ExhaustedQuotaCache
from quotaplane.domain.quota.gateway import Gateway
from quotaplane.domain.quota.ports import CounterStore, TenantLookup
from quotaplane.domain.tenants.admin import TenantAdmin
from quotaplane.domain.tenants.api_keys import ApiKeyAdmin
from quotaplane.integrations.notify.webhooks import HttpWebhookSender
from quotaplane.integrations.plans_file import parse_override_text, parse_plans
from quotaplane.services.counter_seeding import SEED_BUDGET, LedgerSeededCounters
from quotaplane.services.key_cache import ApiKeyCache
from quotaplane.services.notifier import Notifier
from quotaplane.services.plan_versions import PlanVersionPoller
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.services.usage_flusher import UsageFlusher, UsageTrackingCounters
from quotaplane.storage.redis.counters import RedisCounterStore
from quotaplane.storage.sql.audit import SqlAuditStore
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane.telemetry import Telemetry
from quotaplane.transport.grpc.admin import AdminServicer
from quotaplane.transport.grpc.ext_authz import AuthorizationServicer
from quotaplane.transport.grpc.quota import QuotaServicer
from quotaplane.transport.grpc.server import Servicers
from quotaplane.transport.http.authz import HttpAuthz, decision_recorder


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
        request_id_ttl=settings.request_id_ttl,
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


def build_replica(
    settings: Settings,
    connections: Connections,
    plans: PlanRegistry,
    telemetry: Telemetry,
    *,
    close: CloseOptions = DEFAULT_CLOSE,
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
        on_finalized=record_finalized(telemetry),
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
        *stripe_push_loops(settings, stored, telemetry),
        *meter_reporter_loops(settings, stored, plans, telemetry),
        *([Loop("quota notifier", notifier.run)] if notifier else []),
        *period_close_loops(settings, stored, directory, plans, flusher, telemetry, close),
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
        payment_webhooks=payment_webhooks(settings, stored),
        servicers=servicers,
        loops=tuple(loops),
    )


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
