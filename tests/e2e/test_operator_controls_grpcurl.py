"""Operator controls with the real grpcurl against two `quotaplane serve` processes sharing
Postgres and Redis: ApplyPlans on one, the other decides under the new version within 1 s;
an override set on one limits on the other; ListAuditEvents names each change."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quotaplane.storage.sql import migrate
from tests.harness.quotaplane_server import BIN, ServeProcess, serve_process
from tests.harness.tokens import SERVICE_TOKEN

pytestmark = pytest.mark.timeout(180)

TOKEN = "controls-grpcurl-admin-token"
ADMIN = "quotaplane.v1.AdminService"
SEED = "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 10000}\n"
TIGHTER = "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 3}\n"


@pytest.fixture
def servers(
    tmp_path: Path,
    fresh_postgres_database: Callable[[], str],
    redis_url: str,
    redis_key_prefix: str,
) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    database_url = fresh_postgres_database()
    migrate.upgrade(database_url)
    plans = tmp_path / "plans.yaml"
    plans.write_text(SEED)
    prefix = f"{redis_key_prefix}:ctl-{uuid.uuid4().hex[:6]}"
    made = [
        serve_process(
            tmp_path,
            redis_url=redis_url,
            database_url=database_url,
            key_prefix=prefix,
            plans_path=plans,
            admin_token=TOKEN,
            name=name,
        )
        for name in ("a", "b")
    ]
    for server in made:
        server.process.start()
    try:
        for server in made:
            server.process.wait_for_port(server.port, timeout=60)
        yield made[0], made[1]
    finally:
        for server in made:
            server.process.close()


def _grpcurl(server: ServeProcess, method: str, body: dict[str, Any], token: str = TOKEN) -> Any:
    argv = [str(BIN / "grpcurl"), "-plaintext", "-H", f"authorization: Bearer {token}"]
    argv += ["-d", json.dumps(body), server.addr, method]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "{}")


def _month_limit(server: ServeProcess, tenant: str) -> int:
    body = {"tenant_id": tenant, "dry_run": True}
    reply = _grpcurl(server, "quotaplane.v1.QuotaService/CheckQuota", body, SERVICE_TOKEN)
    return int(next(lim["limit"] for lim in reply["limits"] if lim["name"].endswith("/month")))


def _seconds_until(check: Callable[[], bool]) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < 5, "the change never arrived"
    return time.monotonic() - start


def test_plans_and_overrides_reach_the_other_server_and_are_audited(
    servers: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = servers
    tenant = _grpcurl(a, f"{ADMIN}/CreateTenant", {"name": "Acme", "plan": "starter"})["id"]
    assert _month_limit(b, tenant) == 10000
    applied = _grpcurl(a, f"{ADMIN}/ApplyPlans", {"document": TIGHTER, "source": "t.yaml"})
    assert applied["changed"] and applied["version"]["version"] == "2"
    lag = _seconds_until(lambda: _month_limit(b, tenant) == 3)
    print(f"ApplyPlans on A -> B decides under it (grpcurl polling): {lag * 1000:.0f} ms")
    assert lag < 1.0
    override = {"tenant_id": tenant, "document": '{"monthly_quota": 2}'}
    assert json.loads(_grpcurl(a, f"{ADMIN}/SetTenantOverrides", override)["overrides"])
    assert _seconds_until(lambda: _month_limit(b, tenant) == 2) < 1.0
    assert _grpcurl(b, f"{ADMIN}/RollbackPlans", {"version": 1})["version"]["version"] == "3"
    assert _seconds_until(lambda: _month_limit(a, tenant) == 2) < 1.0  # the override holds
    events = _grpcurl(b, f"{ADMIN}/ListAuditEvents", {})["events"]
    assert [(e["method"].rpartition("/")[2], e["credential"]) for e in events] == [
        ("CreateTenant", "admin"),
        ("ApplyPlans", "admin"),
        ("SetTenantOverrides", "admin"),
        ("RollbackPlans", "admin"),
    ]
