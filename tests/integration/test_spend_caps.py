"""Spend caps and shadow limits on two replicas (two Runtimes sharing one Redis and ledger).

Real gRPC CheckQuota on both replicas, the month counters seeded from the ledger by the
replicas themselves, the invoice from GenerateInvoice: 200 concurrent callers never push the
invoice past the cap, and the cap is tight (the next unit would cross it). A shadow limit
under ~100 requests/s admits everything and reports the would-be denials in the decision,
the metrics and GetUsage.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from quotaplane.domain.billing.pricing import Segment, price_invoice
from quotaplane.domain.tenants.model import Tenant
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.client import redis_client
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from tests.harness.tokens import token_channel

pytestmark = pytest.mark.timeout(180)

CAP = Decimal("12.34")
PLANS = """
plans:
  capped:
    base_fee: "2.00"
    spend_cap: "12.34"
    metrics:
      requests:
        included: 100
        charge:
          model: graduated
          tiers:
            - {up_to: 500, unit_price: "0.01"}
            - {up_to: 2000, unit_price: "0.004", flat_fee: "0.50"}
            - {up_to: null, unit_price: "0.0015"}
        limits: {month: 1000000}
      rating.bulk:
        charge: {model: per_unit, unit_price: "0.003"}
  shadowed:
    metrics:
      requests:
        limits: {second: {limit: 10, mode: shadow}}
"""
CATALOG = parse_plans(PLANS, "spend-caps.yaml")
SPEND_CAP = quota_pb2.CheckQuotaResponse.SPEND_CAP


@dataclass
class Replica:
    runtime: Runtime
    quota: quota_pb2_grpc.QuotaServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    authz: external_auth_pb2_grpc.AuthorizationStub

    async def check(
        self, tenant_id: str, cost: int = 1, metric: str = ""
    ) -> quota_pb2.CheckQuotaResponse:
        request = quota_pb2.CheckQuotaRequest(tenant_id=tenant_id, cost=cost, metric=metric)
        reply: quota_pb2.CheckQuotaResponse = await self.quota.CheckQuota(request, timeout=20)
        return reply


@pytest.fixture
async def replicas(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, ledger_url: str
) -> AsyncIterator[list[Replica]]:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS)
    prefix = f"{redis_key_prefix}:s{uuid.uuid4().hex[:8]}"  # shared by both replicas
    async with AsyncExitStack() as stack:
        running = []
        for index in range(2):
            settings = Settings.defaults(
                grpc_addr="127.0.0.1:0",
                authz_http_addr="127.0.0.1:0",
                redis_url=redis_url,
                database_url=ledger_url,
                data_dir=tmp_path / f"data{index}",
                plans_path=plans,
                admin_token="spend-cap-test-token",
                redis_key_prefix=prefix,
                metrics_addr="off",
                metrics_tenant_labels=10,
                redis_timeout=timedelta(seconds=5),  # a shared, loaded test machine
            )
            runtime = await stack.enter_async_context(Runtime(settings))
            channel = await stack.enter_async_context(
                token_channel(f"127.0.0.1:{runtime.grpc.port}", runtime.tokens)
            )
            running.append(
                Replica(
                    runtime,
                    quota_pb2_grpc.QuotaServiceStub(channel),
                    admin_pb2_grpc.AdminServiceStub(channel),
                    external_auth_pb2_grpc.AuthorizationStub(channel),
                )
            )
        yield running


async def _tenant(replica: Replica, plan: str) -> Tenant:
    """A tenant created now: its first invoice prorates the base fee and included units."""
    return await replica.runtime.tenants.create(name=f"cap-{plan}", plan=plan)


def _total(tenant: Tenant, usage: dict[str, int]) -> Decimal:
    """The invoice total pricing.py gives the tenant's month (from its creation) for usage."""
    period = Period.of(datetime.now(UTC))
    segment = Segment(CATALOG.get("capped"), tenant.created_at, period.end, usage)
    return price_invoice(period, [segment]).total


async def _spend_until_refused(
    replica: Replica, tenant_id: str, seed: int, metric: str = ""
) -> int:
    """One caller: random costs while they fit, then single units until refused; its units."""
    rng = random.Random(seed)
    admitted, cost = 0, rng.randint(1, 25)
    while True:
        reply = await replica.check(tenant_id, cost, metric)
        if reply.allowed:
            admitted += cost
            cost = rng.randint(1, 25)
            continue
        assert reply.code == SPEND_CAP and reply.reason == "spend_cap"
        assert Decimal(reply.spend_total) <= CAP and reply.spend_cap == "12.34"
        if cost == 1:
            return admitted
        cost = 1


async def _invoice_usage(replica: Replica, tenant_id: str) -> tuple[Decimal, dict[str, int]]:
    period = datetime.now(UTC).strftime("%Y-%m")
    request = quota_pb2.GenerateInvoiceRequest(tenant_id=tenant_id, period=period)
    invoice = await replica.quota.GenerateInvoice(request, timeout=30)
    usage = {line.metric: line.quantity for line in invoice.lines if line.metric != "base_fee"}
    return Decimal(invoice.total), usage


async def test_200_callers_on_two_replicas_stop_exactly_at_the_cap(
    replicas: list[Replica],
) -> None:
    tenant = await _tenant(replicas[0], "capped")
    admitted = await asyncio.gather(
        *(_spend_until_refused(replicas[i % 2], tenant.id, seed=i) for i in range(200))
    )
    total, usage = await _invoice_usage(replicas[0], tenant.id)
    assert usage["requests"] == sum(admitted)  # every admitted unit is on the invoice
    assert total <= CAP
    assert total == _total(tenant, usage)
    # No allowed request could have been refused: one more unit crosses the cap.
    assert _total(tenant, {**usage, "requests": usage["requests"] + 1}) > CAP


async def test_two_metrics_on_two_replicas_share_the_cap(replicas: list[Replica]) -> None:
    tenant = await _tenant(replicas[0], "capped")
    callers = [
        _spend_until_refused(
            replicas[i % 2], tenant.id, seed=i, metric=("", "rating.bulk")[i % 3 % 2]
        )
        for i in range(200)
    ]
    await asyncio.gather(*callers)
    total, usage = await _invoice_usage(replicas[1], tenant.id)
    assert total <= CAP and usage["rating.bulk"] > 0 and total == _total(tenant, usage)
    for metric in ("requests", "rating.bulk"):
        assert _total(tenant, {**usage, metric: usage[metric] + 1}) > CAP, metric


async def test_a_shadow_limit_under_100_per_second_reports_the_would_be_denials(
    replicas: list[Replica],
) -> None:
    tenant = (await _tenant(replicas[0], "shadowed")).id
    replies = []
    start = time.monotonic()
    for index in range(300):  # ~100 requests/s for 3 s, alternating replicas
        await asyncio.sleep(max(0.0, start + index / 100 - time.monotonic()))
        replies.append(await replicas[index % 2].check(tenant))
    assert all(reply.allowed for reply in replies)  # a shadow limit never refuses
    per_second = Counter(reply.limits[0].reset_at.seconds for reply in replies)
    flagged = [reply for reply in replies if reply.shadow_denied]
    # Exactly the requests past the 10th of each second, wherever they were decided.
    assert len(flagged) == sum(max(0, n - 10) for n in per_second.values())
    # ~90 per whole second: the seconds between the first and the last are whole ones (the
    # pacing catches up after a stall of the loaded machine, so one second may hold more).
    whole = [per_second[second] - 10 for second in sorted(per_second)[1:-1]]
    assert whole and 80 <= sum(whole) / len(whole) <= 100, per_second
    assert {tuple(reply.shadow_denied) for reply in flagged} == {("requests/second",)}
    usage = await replicas[1].admin.GetUsage(
        admin_pb2.GetUsageRequest(tenant_id=tenant), timeout=20
    )
    assert [(s.limit, s.count) for s in usage.shadow_denials] == [("requests/second", len(flagged))]
    scraped = sum(
        _shadow_samples(replica.runtime.telemetry.scrape(), tenant) for replica in replicas
    )
    assert scraped == len(flagged)


def _shadow_samples(exposition: str, tenant_id: str) -> int:
    prefix = f'quotaplane_shadow_denials_total{{limit="requests/second",tenant="{tenant_id}"}}'
    return sum(
        int(float(line.split()[-1])) for line in exposition.splitlines() if line.startswith(prefix)
    )


async def test_lost_month_counters_are_rebuilt_from_the_ledger_before_the_cap_is_checked(
    replicas: list[Replica], redis_url: str
) -> None:
    tenant = await _tenant(replicas[0], "capped")
    assert (await replicas[0].check(tenant.id, 1000)).allowed
    assert (await replicas[1].check(tenant.id, 300, "rating.bulk")).allowed
    await _invoice_usage(replicas[0], tenant.id)  # flushes the usage into the ledger
    settings = replicas[0].runtime.settings
    month = int(Period.of(datetime.now(UTC)).start.timestamp())
    client = redis_client(redis_url, timeout=5.0)
    try:  # Redis loses both month counters (a failover without persistence)
        for metric in ("requests", "rating.bulk"):
            key = keys.counter_key(settings.redis_key_prefix, tenant.id, metric, "month", month)
            assert await client.delete(key) == 1
    finally:
        await client.aclose()
    await asyncio.gather(
        *(_spend_until_refused(replicas[i % 2], tenant.id, seed=i) for i in range(50))
    )
    total, usage = await _invoice_usage(replicas[1], tenant.id)
    assert usage["rating.bulk"] == 300 and total <= CAP and total == _total(tenant, usage)
    assert _total(tenant, {**usage, "requests": usage["requests"] + 1}) > CAP


async def test_the_http_ext_authz_answers_429_spend_cap(replicas: list[Replica]) -> None:
    tenant = await _tenant(replicas[0], "capped")
    created = await replicas[0].admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="gw"), timeout=20
    )
    await _spend_until_refused(replicas[0], tenant.id, seed=1)  # the cap is reached
    http = replicas[1].runtime.running.http
    assert http is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
    try:
        writer.write(
            b"GET /v1/rate HTTP/1.1\r\nhost: q\r\nx-api-key: %b\r\nconnection: close\r\n\r\n"
            % created.secret.encode()
        )
        answer = await asyncio.wait_for(reader.read(), timeout=20)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429")
    denial = json.loads(body)
    assert (denial["error"], denial["spend_cap"]) == ("spend_cap", "12.34")
    assert Decimal(denial["spend_total"]) <= CAP and denial["retry_after_seconds"] > 0
    # Envoy's gRPC Check: the same 429 body, and the decision counted as spend_cap.
    check = external_auth_pb2.CheckRequest()
    check.attributes.request.http.headers["x-api-key"] = created.secret
    reply = await replicas[0].authz.Check(check, timeout=20)
    assert reply.denied_response.status.code == 429
    assert json.loads(reply.denied_response.body)["error"] == "spend_cap"
    scrape = replicas[0].runtime.telemetry.scrape()
    assert 'outcome="spend_cap",source="ext_authz"' in scrape
    assert f'quotaplane_spend_cap_denials_total{{metric="requests",tenant="{tenant.id}"}}' in scrape
