"""A real quotaplane Runtime for the billing tests: gRPC stubs, its ledger, its own key prefix.

``billing_server`` (in the test modules) starts ``Runtime`` on the run's Redis and on SQLite
or Postgres, with ``PLANS`` below; tests create tenants through the tenant store and talk to
QuotaService over a real channel.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from quotaplane.app.billing_parts import CloseOptions
from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.tables import usage_hourly
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane_client.v1 import admin_pb2_grpc, quota_pb2, quota_pb2_grpc, types_pb2
from tests.harness.tokens import token_channel

PLANS = """
plans:
  starter:  {price_per_1000_requests: 0.05, monthly_quota: 10000}
  growth:   {price_per_1000_requests: 0.04, monthly_quota: 50000}
  tiny:     {price_per_1000_requests: 0.05, monthly_quota: 10}
  pro:
    base_fee: "49.00"
    metrics:
      requests:
        included: 1000
        charge:
          model: graduated
          tiers:
            - {up_to: 1000, unit_price: "0.01"}
            - {up_to: null, unit_price: "0.001"}
"""


@dataclass
class BillingServer:
    runtime: Runtime
    stub: quota_pb2_grpc.QuotaServiceStub
    admin: admin_pb2_grpc.AdminServiceStub

    async def tenant(self, plan: str = "growth", *, created_at: datetime | None = None) -> str:
        """A new tenant; ``created_at`` in the past makes it a customer of earlier periods."""
        assert self.runtime.database is not None
        store = SqlTenantStore(self.runtime.database, clock=lambda: created_at or datetime.now(UTC))
        return (await store.create(name=f"billing-{plan}", plan=plan)).id

    async def check(self, tenant_id: str, cost: int) -> quota_pb2.CheckQuotaResponse:
        request = quota_pb2.CheckQuotaRequest(tenant_id=tenant_id, cost=cost)
        reply: quota_pb2.CheckQuotaResponse = await self.stub.CheckQuota(request, timeout=10)
        return reply

    async def record(self, *events: quota_pb2.UsageEvent) -> quota_pb2.RecordUsageResponse:
        request = quota_pb2.RecordUsageRequest(events=events)
        reply: quota_pb2.RecordUsageResponse = await self.stub.RecordUsage(request, timeout=10)
        return reply

    async def invoice(self, tenant_id: str, period: str, **flags: bool) -> types_pb2.Invoice:
        request = quota_pb2.GenerateInvoiceRequest(tenant_id=tenant_id, period=period, **flags)
        reply: types_pb2.Invoice = await self.stub.GenerateInvoice(request, timeout=10)
        return reply

    async def ledger_units(self, tenant_id: str) -> int:
        assert self.runtime.database is not None
        query = sa.select(sa.func.coalesce(sa.func.sum(usage_hourly.c.quantity), 0)).where(
            usage_hourly.c.tenant_id == tenant_id
        )
        async with self.runtime.database.connect() as conn:
            return int((await conn.execute(query)).scalar_one())


def event(
    tenant_id: str,
    quantity: int = 1,
    *,
    event_id: str | None = None,
    metric: str = "",
    at: datetime | None = None,
) -> quota_pb2.UsageEvent:
    message = quota_pb2.UsageEvent(
        event_id=uuid.uuid4().hex if event_id is None else event_id,
        tenant_id=tenant_id,
        metric=metric,
        quantity=quantity,
    )
    if at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(at)
        message.timestamp.CopyFrom(stamp)
    return message


def this_period() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def long_ago() -> datetime:
    """A creation time that makes a tenant a customer of the previous period too."""
    return datetime.now(UTC) - timedelta(days=70)


def last_period_instant() -> datetime:
    """An instant in the previous calendar month (UTC)."""
    first = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return first - timedelta(days=3)


@asynccontextmanager
async def sqlite_billing_server(
    tmp_path: Path, *, redis_url: str, key_prefix: str, **overrides: Any
) -> AsyncIterator[BillingServer]:
    """``billing_server`` on a freshly migrated SQLite ledger under ``tmp_path``."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    async with billing_server(
        tmp_path, redis_url=redis_url, key_prefix=key_prefix, database_url=url, **overrides
    ) as server:
        yield server


@asynccontextmanager
async def billing_server(
    tmp_path: Path,
    *,
    redis_url: str,
    key_prefix: str,
    database_url: str,
    flush_interval: timedelta = timedelta(hours=1),
    close: CloseOptions | None = None,
    **overrides: Any,
) -> AsyncIterator[BillingServer]:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS)
    # No automatic period close unless a test asks: it would finalize last month's invoices
    # of the long-ago tenants these tests record usage for.
    overrides.setdefault("billing_grace", None)
    overrides.setdefault("redis_key_prefix", f"{key_prefix}:b{uuid.uuid4().hex[:8]}")
    settings = Settings.defaults(
        grpc_addr="127.0.0.1:0",
        authz_http_addr="127.0.0.1:0",
        redis_url=redis_url,
        database_url=database_url,
        data_dir=tmp_path / "data",
        plans_path=plans,
        admin_token="billing-test-token",
        redis_timeout=timedelta(seconds=2),
        flush_interval=flush_interval,
        metrics_addr="off",
        **overrides,
    )
    async with Runtime(settings, close=close) as runtime:
        assert runtime.grpc is not None
        async with token_channel(f"127.0.0.1:{runtime.grpc.port}", runtime.tokens) as channel:
            yield BillingServer(
                runtime,
                quota_pb2_grpc.QuotaServiceStub(channel),
                admin_pb2_grpc.AdminServiceStub(channel),
            )
