"""``quotaplane billing close`` outside a replica: the same PeriodCloser, on its own connections.

The command works on the ledger directly (not through an RPC): it is the same run the
replicas do, under the same lease, so it never races them, it works when no replica is up, and
a month with many tenants does not have to fit into one RPC deadline. It needs the ledger
(``QUOTAPLANE_DATABASE_URL``, or the embedded SQLite file) and, for a real run, the Redis the
replicas use (``QUOTAPLANE_REDIS_URL``), since each tenant's unflushed usage is flushed first.
"""

from __future__ import annotations

from collections.abc import Callable

from quotaplane.app.billing_parts import CloseOptions, period_closer
from quotaplane.app.embedded import existing_ledger_url
from quotaplane.app.runtime import default_plans_path
from quotaplane.app.stores import Connections, stores
from quotaplane.app.wiring import usage_flusher
from quotaplane.config import ConfigError, Settings
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import load_plans
from quotaplane.services.period_close import CloseReport, TenantResult
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.storage.redis.client import command_pipe, redis_client
from quotaplane.storage.sql.engine import create_async_engine_for


async def close_period(
    settings: Settings,
    period: Period,
    *,
    dry_run: bool,
    report: Callable[[TenantResult], None] | None = None,
    options: CloseOptions | None = None,
) -> CloseReport:
    """Close ``period`` by hand (a finished period runs again: late usage gets billed)."""
    if not dry_run and not settings.redis_url:
        raise ConfigError(
            "QUOTAPLANE_REDIS_URL is not set: a real close flushes each tenant's usage from the "
            "replicas' Redis first (with the embedded defaults, `serve` closes periods itself)"
        )
    catalog = load_plans(settings.plans_path or default_plans_path())
    database = create_async_engine_for(existing_ledger_url(settings))
    redis_url = settings.redis_url or "redis://127.0.0.1:6379"  # a dry run never calls it
    timeout = settings.redis_timeout.total_seconds()
    connections = Connections(
        database=database,
        counters=command_pipe(redis_url, timeout=timeout),
        redis=redis_client(redis_url, timeout=max(1.0, timeout)),
    )
    try:
        stored = stores(settings, connections)
        closer = period_closer(
            settings,
            stored,
            TenantDirectory(stored.tenants),
            lambda: catalog,
            usage_flusher(settings, stored),
            options=options or CloseOptions(),
        )
        return await closer.close(period, restart=True, dry_run=dry_run, report=report)
    finally:
        await connections.redis.aclose()
        await connections.counters.aclose()
        await database.dispose()
