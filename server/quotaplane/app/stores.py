"""The stores of one replica: what it holds open (``Connections``) and every store over those
connections, each built once (``stores``). Pure: nothing here connects; ``runtime.py`` opens
the connections and the wiring builds on what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.config import Settings
from quotaplane.storage.redis.client import CommandPipe, RedisClient
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
