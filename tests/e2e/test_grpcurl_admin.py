"""The operator's story with the real grpcurl binary against `quotaplane serve` (reflection).

The server runs as a subprocess on the run's Redis and a SQLite ledger migrated with
`quotaplane db upgrade`, exactly as an operator would set it up. The commands below are the
README's: create tenant -> create key -> list keys -> get tenant -> CheckQuota -> RecordUsage
-> GetUsage -> GenerateInvoice -> list, get and void invoices -> update plan -> suspend -> resume
-> revoke key -> list tenants page by page -> list plans; and bad input to every admin RPC is
refused with a clear message while the tenants stay as they were.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.harness.quotaplane_server import BIN, ServeProcess, start_serve

pytestmark = pytest.mark.timeout(180)

TOKEN = "grpcurl-story-admin-token"
ADMIN = "quotaplane.v1.AdminService"
QUOTA = "quotaplane.v1.QuotaService"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_key_prefix: str
) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("grpcurl-admin")
    database_url = f"sqlite:///{workdir / 'ledger.db'}"
    upgrade = subprocess.run(
        [str(BIN / "quotaplane"), "db", "--database-url", database_url, "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    served = start_serve(
        workdir,
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=f"{redis_key_prefix}:grpcurl-{uuid.uuid4().hex[:8]}",
        admin_token=TOKEN,
    )
    try:
        yield served
    finally:
        served.process.close()


def grpcurl(server: ServeProcess, method: str, body: dict[str, Any] | None = None) -> Any:
    """Call ``method`` like the README does; the JSON reply, or AssertionError with stderr."""
    result = _run(server, method, body)
    assert result.returncode == 0, f"{method}: {result.stderr}"
    return json.loads(result.stdout)


def refused(server: ServeProcess, method: str, body: dict[str, Any]) -> tuple[str, str]:
    """The (status name, message) of a call that must fail."""
    result = _run(server, method, body, "-format-error")
    assert result.returncode != 0, f"{method} {body} was accepted: {result.stdout}"
    error = json.loads(result.stderr)  # -format-error: the status as JSON on stderr
    return _CODES[error["code"]], error["message"]


_CODES = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 6: "ALREADY_EXISTS", 9: "FAILED_PRECONDITION"}


def _run(
    server: ServeProcess, method: str, body: dict[str, Any] | None, *flags: str
) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "grpcurl"), "-plaintext", "-max-time", "20", *flags]
    argv += ["-H", f"authorization: Bearer {_token(server, method)}"]
    argv += ["-d", json.dumps(body or {}), server.addr, method]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _token(server: ServeProcess, method: str) -> str:
    """The token an operator's script would use for ``method`` (README "Tokens")."""
    if method.startswith(ADMIN):
        return TOKEN
    return server.tokens.service if method.endswith("/CheckQuota") else server.tokens.billing


def all_tenants(server: ServeProcess) -> list[dict[str, Any]]:
    reply = grpcurl(server, f"{ADMIN}/ListTenants", {"page_size": 1000})
    tenants: list[dict[str, Any]] = reply.get("tenants", [])
    return tenants


def test_the_operator_story(server: ServeProcess) -> None:
    tenant = grpcurl(
        server,
        f"{ADMIN}/CreateTenant",
        {"name": "Acme Corp", "plan": "starter", "external_id": "crm-42"},
    )
    assert tenant["status"] == "ACTIVE" and uuid.UUID(tenant["id"])
    created = grpcurl(
        server, f"{ADMIN}/CreateApiKey", {"tenant_id": tenant["id"], "name": "production"}
    )
    secret, key = created["secret"], created["key"]
    assert secret.startswith("qp_live_") and key["prefix"] == secret[:12]

    keys = grpcurl(server, f"{ADMIN}/ListApiKeys", {"tenant_id": tenant["id"]})
    assert [k["id"] for k in keys["keys"]] == [key["id"]]
    assert secret not in json.dumps(keys), "the secret must be shown only once"
    assert grpcurl(server, f"{ADMIN}/GetTenant", {"tenant_id": tenant["id"]}) == tenant

    check = grpcurl(server, f"{QUOTA}/CheckQuota", {"tenant_id": tenant["id"], "cost": 3})
    assert check["allowed"] is True and check["limits"][0]["remaining"] == "9997"
    event = {"event_id": "batch-1", "tenant_id": tenant["id"], "quantity": 5}
    recorded = grpcurl(server, f"{QUOTA}/RecordUsage", {"events": [event]})
    assert recorded["accepted"] == 1, recorded
    usage = grpcurl(
        server, f"{ADMIN}/GetUsage", {"tenant_id": tenant["id"], "bucket": "USAGE_BUCKET_DAY"}
    )
    assert usage["total"] == "8" and usage["metric"] == "requests", usage
    period = datetime.now(UTC).strftime("%Y-%m")
    invoice = grpcurl(
        server, f"{QUOTA}/GenerateInvoice", {"tenant_id": tenant["id"], "period": period}
    )
    assert (invoice["status"], invoice["total"]) == ("DRAFT", "0.05"), invoice
    listed_invoices = grpcurl(server, f"{ADMIN}/ListInvoices", {"tenant_id": tenant["id"]})
    assert listed_invoices["invoices"] == [invoice]
    assert grpcurl(server, f"{ADMIN}/GetInvoice", {"invoice_id": invoice["id"]}) == invoice
    voided = grpcurl(
        server, f"{ADMIN}/VoidInvoice", {"invoice_id": invoice["id"], "reason": "test invoice"}
    )
    assert voided["status"] == "VOID"

    moved = grpcurl(
        server, f"{ADMIN}/UpdateTenantPlan", {"tenant_id": tenant["id"], "plan": "growth"}
    )
    assert moved["plan"] == "growth"
    suspended = grpcurl(
        server, f"{ADMIN}/SuspendTenant", {"tenant_id": tenant["id"], "reason": "unpaid invoice"}
    )
    assert (suspended["status"], suspended["suspended_reason"]) == ("SUSPENDED", "unpaid invoice")
    _eventually_code(server, tenant["id"], "SUSPENDED")
    resumed = grpcurl(server, f"{ADMIN}/ResumeTenant", {"tenant_id": tenant["id"]})
    assert resumed["status"] == "ACTIVE" and "suspended_reason" not in resumed

    revoked = grpcurl(server, f"{ADMIN}/RevokeApiKey", {"key_id": key["id"]})
    assert revoked["revoked_at"]
    assert grpcurl(server, f"{ADMIN}/ListApiKeys", {"tenant_id": tenant["id"]}) == {}
    listed = grpcurl(
        server, f"{ADMIN}/ListApiKeys", {"tenant_id": tenant["id"], "include_revoked": True}
    )
    assert listed["keys"][0]["revoked_at"] == revoked["revoked_at"]


def test_listing_tenants_page_by_page(server: ServeProcess) -> None:
    for name in ("Page A", "Page B", "Page C"):
        grpcurl(server, f"{ADMIN}/CreateTenant", {"name": name, "plan": "enterprise"})
    names, token = [], ""
    while True:
        page = grpcurl(
            server,
            f"{ADMIN}/ListTenants",
            {"page_size": 2, "plan": "enterprise", "page_token": token},
        )
        names += [t["name"] for t in page["tenants"]]
        token = page.get("next_page_token", "")
        if not token:
            break
    assert names == ["Page A", "Page B", "Page C"]
    suspended = grpcurl(server, f"{ADMIN}/ListTenants", {"status": "SUSPENDED"})
    assert all(t["status"] == "SUSPENDED" for t in suspended.get("tenants", []))


def test_list_plans_shows_prices(server: ServeProcess) -> None:
    plans = grpcurl(server, f"{ADMIN}/ListPlans")
    by_name = {p["name"]: p for p in plans["plans"]}
    assert sorted(by_name) == ["enterprise", "growth", "starter"]
    assert by_name["growth"]["metrics"][0]["price"] == "0.04 USD per started 1,000"
    assert by_name["growth"]["metrics"][0]["limits"][0] == {
        "window": "WINDOW_MONTH",
        "limit": "50000",
        "overage_policy": "OVERAGE_POLICY_BLOCK",
    }
    assert grpcurl(server, f"{ADMIN}/ReloadPlans")["plans"] == plans["plans"]


UNKNOWN = "6f1d2c3b-0000-4000-8000-000000000000"
BAD_INPUT: list[tuple[str, dict[str, Any], str, str]] = [
    ("CreateTenant", {"name": "", "plan": "growth"}, "INVALID_ARGUMENT", "name is required"),
    ("CreateTenant", {"name": "x" * 201, "plan": "growth"}, "INVALID_ARGUMENT", "at most 200"),
    ("CreateTenant", {"name": "A", "plan": "gold"}, "NOT_FOUND", "known plans"),
    ("CreateTenant", {"name": "A", "plan": ""}, "INVALID_ARGUMENT", "plan is required"),
    (
        "CreateTenant",
        {"name": "B", "plan": "growth", "external_id": "crm-dup"},
        "ALREADY_EXISTS",
        "",
    ),
    ("GetTenant", {"tenant_id": "42"}, "INVALID_ARGUMENT", "must be a UUID"),
    ("GetTenant", {"tenant_id": UNKNOWN}, "NOT_FOUND", "does not exist"),
    ("ListTenants", {"page_size": 100000}, "INVALID_ARGUMENT", "page_size"),
    ("ListTenants", {"page_token": "bm9wZQ"}, "INVALID_ARGUMENT", "page_token"),
    ("UpdateTenantPlan", {"tenant_id": UNKNOWN, "plan": "growth"}, "NOT_FOUND", "tenant"),
    ("UpdateTenantPlan", {"tenant_id": "x", "plan": "growth"}, "INVALID_ARGUMENT", "UUID"),
    ("SuspendTenant", {"tenant_id": UNKNOWN}, "NOT_FOUND", "tenant"),
    ("SuspendTenant", {"tenant_id": ""}, "INVALID_ARGUMENT", "tenant_id is required"),
    ("ResumeTenant", {"tenant_id": "nope"}, "INVALID_ARGUMENT", "UUID"),
    ("CreateApiKey", {"tenant_id": UNKNOWN, "name": "k"}, "NOT_FOUND", "tenant"),
    ("CreateApiKey", {"tenant_id": UNKNOWN, "name": ""}, "INVALID_ARGUMENT", "name is required"),
    ("ListApiKeys", {"tenant_id": "bad"}, "INVALID_ARGUMENT", "UUID"),
    ("RevokeApiKey", {"key_id": UNKNOWN}, "NOT_FOUND", "API key"),
    ("RevokeApiKey", {"key_id": ""}, "INVALID_ARGUMENT", "key_id is required"),
    ("GetUsage", {"tenant_id": UNKNOWN}, "NOT_FOUND", "tenant"),
    ("GetUsage", {"tenant_id": "x"}, "INVALID_ARGUMENT", "UUID"),
    (
        "GetUsage",
        {"tenant_id": UNKNOWN, "start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"},
        "INVALID_ARGUMENT",
        "must be after start",
    ),
    (
        "GetUsage",
        {"tenant_id": UNKNOWN, "start": "2024-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        "INVALID_ARGUMENT",
        "at most 400 days",
    ),
    ("GetUsage", {"tenant_id": UNKNOWN, "metric": "Bad Metric"}, "INVALID_ARGUMENT", "metric"),
    ("ListInvoices", {"period": "2026-13"}, "INVALID_ARGUMENT", "period"),
    ("ListInvoices", {"page_size": 1001}, "INVALID_ARGUMENT", "page_size"),
    ("ListInvoices", {"page_token": "bm9wZQ"}, "INVALID_ARGUMENT", "page_token"),
    ("GetInvoice", {"invoice_id": UNKNOWN}, "NOT_FOUND", "invoice"),
    ("GetInvoice", {"invoice_id": "12"}, "INVALID_ARGUMENT", "UUID"),
    ("VoidInvoice", {"invoice_id": UNKNOWN}, "NOT_FOUND", "invoice"),
]


def test_bad_input_to_every_admin_rpc_is_refused_and_changes_nothing(
    server: ServeProcess,
) -> None:
    grpcurl(
        server, f"{ADMIN}/CreateTenant", {"name": "Z", "plan": "growth", "external_id": "crm-dup"}
    )
    before = all_tenants(server)
    for rpc, body, code, words in BAD_INPUT:
        answered, message = refused(server, f"{ADMIN}/{rpc}", body)
        assert (answered, words in message) == (code, True), f"{rpc} {body}: {message}"
    assert all_tenants(server) == before


def test_a_bad_plan_change_leaves_the_tenant_as_it_was(server: ServeProcess) -> None:
    tenant = grpcurl(server, f"{ADMIN}/CreateTenant", {"name": "Keep", "plan": "starter"})
    body = {"tenant_id": tenant["id"], "plan": "platinum"}
    assert refused(server, f"{ADMIN}/UpdateTenantPlan", body)[0] == "NOT_FOUND"
    body = {"tenant_id": tenant["id"], "reason": "r" * 501}
    assert refused(server, f"{ADMIN}/SuspendTenant", body)[0] == "INVALID_ARGUMENT"
    assert grpcurl(server, f"{ADMIN}/GetTenant", {"tenant_id": tenant["id"]}) == tenant


def _eventually_code(server: ServeProcess, tenant_id: str, code: str) -> None:
    deadline = time.monotonic() + 2.0
    body = {"tenant_id": tenant_id, "dry_run": True}
    while grpcurl(server, f"{QUOTA}/CheckQuota", body).get("code") != code:
        assert time.monotonic() < deadline, f"CheckQuota never answered {code}"
        time.sleep(0.05)


def test_admin_calls_need_the_admin_token_not_an_api_key(server: ServeProcess) -> None:
    tenant = grpcurl(server, f"{ADMIN}/CreateTenant", {"name": "Keyholder", "plan": "starter"})
    created = grpcurl(server, f"{ADMIN}/CreateApiKey", {"tenant_id": tenant["id"], "name": "k"})
    before = all_tenants(server)
    body = json.dumps({"name": "Intruder", "plan": "growth"})
    for headers, code in [
        ([], "Unauthenticated"),
        (["-H", "authorization: Bearer not-the-token"], "Unauthenticated"),
        (["-H", f"authorization: Bearer {created['secret']}"], "PermissionDenied"),
    ]:
        argv = [str(BIN / "grpcurl"), "-plaintext", "-max-time", "20", *headers, "-d", body]
        result = subprocess.run(
            [*argv, server.addr, f"{ADMIN}/CreateTenant"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0 and f"Code: {code}" in result.stderr, result.stderr
    assert all_tenants(server) == before
