"""GET /v1/usage through a real Envoy: the caller's own tenant, the same numbers as the operators'
RPCs, no quota spent, and an identity that only quotaplane's own check decides.

Tenant A spends 3 single and 1 bulk rating (13 units), tenant B 2 units; both have a draft
invoice. Each path of Envoy's ext_authz (HTTP, gRPC) is run once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import admin_pb2
from tests.harness.gateway import request
from tests.harness.tenant_stack import PLAN, QUOTA, Tenant, TenantStack, tenant_stack

pytestmark = pytest.mark.timeout(90)

A_UNITS = 3 * 1 + 10
B_UNITS = 2


@dataclass
class Usage:
    stack: TenantStack
    a: Tenant
    b: Tenant
    suspended: Tenant
    period: str


@pytest.fixture(scope="module", params=["http", "grpc"])
def usage(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    redis_key_prefix: str,
) -> Iterator[Usage]:
    workdir = tmp_path_factory.mktemp(f"usage-{request.param}")
    database = f"sqlite:///{workdir / 'ledger.db'}"
    migrate.upgrade(database)
    prefix = f"{redis_key_prefix}-u{request.param}"
    with tenant_stack(
        workdir, redis_url=redis_url, key_prefix=prefix, database=database, authz=request.param
    ) as stack:
        a, b, c = stack.tenant("tenant a"), stack.tenant("tenant b"), stack.tenant("tenant c")
        period = datetime.now(UTC).strftime("%Y-%m")
        for _ in range(3):
            assert stack.rate({"x-api-key": a.key})[0] == 200
        assert stack.rate({"x-api-key": a.key}, bulk=True)[0] == 200
        for _ in range(B_UNITS):
            assert stack.rate({"x-api-key": b.key})[0] == 200
        stack.client.generate_invoice(b.id, period)
        stack.client.admin_call(
            "SuspendTenant", admin_pb2.SuspendTenantRequest(tenant_id=c.id, reason="unpaid")
        )
        if datetime.now(UTC).strftime("%Y-%m") != period:
            pytest.skip("the billing period changed while the traffic ran; run again")
        yield Usage(stack, a, b, c, period)


def get_usage(usage: Usage, key: str, query: str = "") -> tuple[int, dict[str, str], Any]:
    return usage.stack.get(f"/v1/usage{query}", {"x-api-key": key})


def test_a_key_sees_its_own_tenant_only(usage: Usage) -> None:
    status, headers, body = get_usage(usage, usage.a.key)
    assert status == 200 and headers["content-type"] == "application/json"
    assert body["tenant"] == {
        "id": usage.a.id,
        "name": "tenant a",
        "plan": PLAN,
        "status": "active",
    }
    assert body["period"] == usage.period and body["current"] is True
    assert {invoice["id"] for invoice in body["invoices"]} == {body["charges"]["id"]}
    b_invoices = usage.stack.client.admin_call(
        "ListInvoices", admin_pb2.ListInvoicesRequest(tenant_id=usage.b.id)
    ).invoices
    assert b_invoices and not {i.id for i in b_invoices} & {i["id"] for i in body["invoices"]}
    _, _, other = get_usage(usage, usage.b.key)
    assert other["tenant"]["id"] == usage.b.id
    assert other["daily"]["requests"][0]["quantity"] == B_UNITS


def test_the_numbers_equal_get_usage_and_a_draft_invoice(usage: Usage) -> None:
    status, _, body = get_usage(usage, usage.a.key)
    assert status == 200
    report = usage.stack.client.admin_call(
        "GetUsage",
        admin_pb2.GetUsageRequest(
            tenant_id=usage.a.id, metric="requests", bucket=admin_pb2.USAGE_BUCKET_DAY
        ),
    )
    days = [
        {"date": b.start.ToDatetime(tzinfo=UTC).date().isoformat(), "quantity": b.quantity}
        for b in report.buckets
    ]
    assert body["daily"] == {"requests": days}
    assert sum(day["quantity"] for day in days) == A_UNITS
    invoice = usage.stack.client.generate_invoice(usage.a.id, usage.period)
    charges = body["charges"]
    assert (charges["id"], charges["status"], charges["estimate"]) == (invoice.id, "draft", True)
    assert Decimal(charges["total"]) == Decimal(invoice.total) == Decimal("0.03")  # 13 x 0.0026
    assert charges["total_minor"] == invoice.total_minor == 3
    assert [(line["metric"], line["quantity"], line["amount"]) for line in charges["lines"]] == [
        (line.metric, line.quantity, line.amount) for line in invoice.lines
    ]
    [month] = [limit for limit in body["limits"] if limit["window"] == "month"]
    check = usage.stack.client.check_quota(usage.a.id, metric="requests", dry_run=True)
    [state] = [s for s in check.limits if s.name == "requests/month"]
    assert (month["limit"], month["used"], month["remaining"]) == (QUOTA, A_UNITS, state.remaining)
    reset = state.reset_at.ToDatetime(tzinfo=UTC)
    assert month["reset_at"] == reset.isoformat().replace("+00:00", "Z") == body["period_end"]


def test_reading_usage_costs_no_quota(usage: Usage) -> None:
    before = [limit["remaining"] for limit in get_usage(usage, usage.a.key)[2]["limits"]]
    for _ in range(5):
        assert get_usage(usage, usage.a.key)[0] == 200
    after = [limit["remaining"] for limit in get_usage(usage, usage.a.key)[2]["limits"]]
    assert before == after == [QUOTA + 5 - A_UNITS, QUOTA - A_UNITS]  # day, month


def test_no_key_or_a_bad_key_is_401(usage: Usage) -> None:
    status, _, body = usage.stack.get("/v1/usage")
    assert (status, body["error"]) == (401, "unauthenticated")
    status, _, body = get_usage(usage, "qp_live_not-issued")
    assert (status, body["error"]) == (401, "unauthenticated")


def test_a_suspended_tenant_sees_its_status(usage: Usage) -> None:
    deadline = time.monotonic() + 10  # the suspension reaches the tenant cache within cache_ttl
    while (answer := get_usage(usage, usage.suspended.key))[0] != 403:
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    assert answer[2]["error"] == "tenant_suspended"


def test_a_past_period_and_a_bad_period(usage: Usage) -> None:
    invoices = len(get_usage(usage, usage.a.key)[2]["invoices"])
    status, _, body = get_usage(usage, usage.a.key, "?period=1999-01")
    assert status == 200 and (body["period"], body["current"]) == ("1999-01", False)
    assert body["charges"] is None and body["limits"] == [] and body["daily"] == {"requests": []}
    assert len(body["invoices"]) == invoices  # reading a past period created no invoice
    status, _, body = get_usage(usage, usage.a.key, "?period=2026-13")
    assert (status, body["error"]) == (400, "invalid_argument")
    status, _, body = get_usage(usage, usage.a.key, f"?period={usage.period}")
    assert status == 200 and body["period"] == usage.period


def test_a_client_cannot_name_another_tenant(usage: Usage) -> None:
    forged = {
        "x-api-key": usage.a.key,
        "x-tenant-id": usage.b.id,
        "x-quotaplane-proxy-token": usage.stack.serve.tokens.service,
    }
    status, _, body = usage.stack.get("/v1/usage", forged)
    assert status == 200 and body["tenant"]["id"] == usage.a.id


def test_quotaplane_refuses_a_usage_request_that_did_not_come_through_envoy(usage: Usage) -> None:
    port = usage.stack.serve.http_port
    status, _, body = request(port, "GET", "/_tenant/v1/usage", None, {"x-tenant-id": usage.a.id})
    assert (status, body["error"]) == (403, "not_through_gateway")


def test_overrides_show_their_spend_cap_and_shadow_denials(usage: Usage) -> None:
    """A tenant's overrides (#19) are its terms here too: the spend cap they set, and a shadow
    limit's would-be denials, counted by the same atomic step that admitted the requests."""
    tenant = usage.stack.tenant("tenant with a deal")
    deal = "{spend_cap: '5.00', metrics: {requests: {limits: {day: {limit: 1, mode: shadow}}}}}"
    usage.stack.client.admin_call(
        "SetTenantOverrides",
        admin_pb2.SetTenantOverridesRequest(tenant_id=tenant.id, document=deal),
    )

    def day_limit() -> dict[str, Any]:
        status, _, body = get_usage(usage, tenant.key)
        assert status == 200, body
        [day] = [limit for limit in body["limits"] if limit["window"] == "day"]
        return {**day, "spend_cap": body["spend_cap"]}

    deadline = time.monotonic() + 5
    while day_limit()["mode"] != "shadow":  # every replica within QUOTAPLANE_CACHE_TTL
        assert time.monotonic() < deadline, "the override never reached the gateway"
        time.sleep(0.1)
    for _ in range(3):  # a shadow limit of 1 a day refuses nothing
        assert usage.stack.rate({"x-api-key": tenant.key})[0] == 200
    day = day_limit()
    assert (day["mode"], day["limit"], day["used"], day["would_be_denials"]) == (
        "shadow",
        1,
        3,
        2,
    )
    assert day["spend_cap"] == "5.00"
    status, _, body = get_usage(usage, usage.a.key)
    assert status == 200
    assert body["spend_cap"] is None
    assert {limit["mode"] for limit in body["limits"]} == {"enforce"}
    assert all("would_be_denials" not in limit for limit in body["limits"])
