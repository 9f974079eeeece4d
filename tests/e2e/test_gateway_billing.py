"""What Envoy admits is what the tenant is billed: gateway traffic -> ledger -> usage -> invoice.

A real Envoy asks a real `quotaplane serve` (ext_authz) about every request to the OpenClaw
sample; admitted units are counted in Redis and reach the ledger (SQLite, and Postgres where the
run has one), where AdminService.GetUsage reads them and QuotaService.GenerateInvoice prices
them, both called over gRPC with the typed client.

Both RPCs flush the tenant's usage from Redis into the ledger before reading it, so they are
current to the request. The background flush is set to an hour here so that it cannot be what
put the usage in the ledger: with a short interval these tests would pass even if the RPCs
read a stale ledger.

The traffic mixes what must be billed (single ratings at cost 1, bulk ratings at cost 10) with
what must not be (a bulk call refused for lack of quota, an unknown key, /healthz, an unknown
path). The plan prices per unit so that the admitted total lands exactly on a half cent:
ROUND_HALF_UP and ROUND_HALF_EVEN disagree there, and a miscount by one unit shows as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from quotaplane.storage.sql import migrate
from quotaplane_client import QuotaplaneClient
from quotaplane_client.v1 import admin_pb2, types_pb2
from tests.harness.gateway import request
from tests.harness.tenant_stack import PLAN, tenant_stack

pytestmark = pytest.mark.timeout(60)

UNIT_PRICE = Decimal("0.0026")
QUOTA = 29
PLANS = f"""
plans:
  {PLAN}:
    metrics:
      requests:
        charge: {{model: per_unit, unit_price: "{UNIT_PRICE}"}}
        limits: {{month: {QUOTA}}}
"""
SINGLE, BULK = 1, 10  # the costs envoy/envoy.yaml gives /v1/rate and /v1/rate/bulk
RATE = {"type": "domain", "value": "example.com"}
BULK_BODY = {"items": [RATE, {"type": "ip", "value": "192.0.2.1"}]}


@dataclass
class Billed:
    client: QuotaplaneClient
    tenant_id: str
    period: str
    statuses: list[int]  # of the requests below, in order
    remaining: str  # x-ratelimit-remaining after the last admitted call


def admitted_units() -> int:
    return 5 * SINGLE + 2 * BULK


def send_traffic(port: int, key: str) -> tuple[list[int], str]:
    """The requests whose statuses the tests expect; returns them and the last quota header."""
    auth = {"x-api-key": key}
    answers = [request(port, "POST", "/v1/rate", RATE, auth) for _ in range(5)]
    answers += [request(port, "POST", "/v1/rate/bulk", BULK_BODY, auth) for _ in range(2)]
    remaining = answers[-1][1]["x-ratelimit-remaining"]
    answers += [
        request(port, "POST", "/v1/rate/bulk", BULK_BODY, auth),  # 4 left < 10: refused whole
        request(port, "POST", "/v1/rate", RATE, {"x-api-key": "qp_live_not-issued"}),
        request(port, "GET", "/healthz", None, auth),  # ext_authz off: never charged
        request(port, "GET", "/v1/unknown", None, auth),  # answered by Envoy itself
    ]
    return [status for status, _, _ in answers], remaining


@contextlib.contextmanager
def billed_gateway(
    workdir: Path, redis_url: str, key_prefix: str, database: str, authz: str
) -> Iterator[Billed]:
    with tenant_stack(
        workdir,
        redis_url=redis_url,
        key_prefix=key_prefix,
        database=database,
        authz=authz,
        plans=PLANS,
    ) as stack:
        tenant = stack.tenant("billed via envoy")
        period = datetime.now(UTC).strftime("%Y-%m")
        statuses, remaining = send_traffic(stack.envoy_port, tenant.key)
        if datetime.now(UTC).strftime("%Y-%m") != period:
            pytest.skip("the billing period changed while the traffic ran; run again")
        yield Billed(stack.client, tenant.id, period, statuses, remaining)


# Both ledgers and both ext_authz paths, without running every pair.
@pytest.fixture(scope="module", params=["sqlite-http", "postgres-http", "sqlite-grpc"])
def billed(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    redis_key_prefix: str,
) -> Iterator[Billed]:
    workdir = tmp_path_factory.mktemp(f"billing-{request.param}")
    ledger, authz = request.param.split("-")
    if ledger == "postgres":
        database = request.getfixturevalue("migrated_postgres")
    else:
        database = f"sqlite:///{workdir / 'ledger.db'}"
        migrate.upgrade(database)
    prefix = f"{redis_key_prefix}-gb-{request.param}"  # keys allow 32 characters
    with billed_gateway(workdir, redis_url, prefix, database, authz) as billed:
        yield billed


def usage(billed: Billed) -> admin_pb2.GetUsageResponse:
    request = admin_pb2.GetUsageRequest(
        tenant_id=billed.tenant_id, metric="requests", bucket=admin_pb2.USAGE_BUCKET_MONTH
    )
    response: admin_pb2.GetUsageResponse = billed.client.admin_call("GetUsage", request)
    return response


def test_envoy_admits_the_metered_calls_and_refuses_the_rest(billed: Billed) -> None:
    assert billed.statuses == [200] * 5 + [200] * 2 + [429, 401, 200, 404]
    assert billed.remaining == str(QUOTA - admitted_units())


def test_get_usage_reports_exactly_the_admitted_units_from_the_ledger(billed: Billed) -> None:
    report = usage(billed)
    assert report.unflushed == 0  # all of it read from the ledger
    assert (report.tenant_id, report.metric) == (billed.tenant_id, "requests")
    assert report.total == admitted_units()
    assert [bucket.quantity for bucket in report.buckets] == [admitted_units()]
    start = report.buckets[0].start.ToDatetime(tzinfo=UTC)
    assert start.strftime("%Y-%m") == billed.period and start.day == 1  # the month's bucket


def test_the_invoice_prices_the_admitted_units_under_the_plan(billed: Billed) -> None:
    invoice = billed.client.generate_invoice(billed.tenant_id, billed.period)
    expected = (UNIT_PRICE * admitted_units()).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert expected == Decimal("0.07")  # 25 x 0.0026 = 0.065: half up, not half even (0.06)
    assert (invoice.tenant_id, invoice.period) == (billed.tenant_id, billed.period)
    assert (invoice.status, invoice.currency) == (types_pb2.Invoice.DRAFT, "USD")
    [line] = invoice.lines
    assert (line.metric, line.plan, line.quantity, line.included) == (
        "requests",
        PLAN,
        admitted_units(),
        0,
    )
    assert Decimal(line.unit_price) == UNIT_PRICE
    minor = int(expected.scaleb(2))  # USD: 2 decimals
    assert (Decimal(line.amount), line.amount_minor) == (expected, minor)
    assert Decimal(invoice.subtotal) == Decimal(invoice.total) == expected
    assert invoice.total_minor == minor
