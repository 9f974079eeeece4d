"""Credentials by role, secure by default: a real Runtime started with no tokens configured.

Who may call what is ``transport/grpc/auth.py``'s table; these tests call over a plain channel
with each token (or none) and check what the server answers and what it stored.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from quotaplane.app.credentials import resolve_tokens
from quotaplane.config import ConfigError, Settings
from quotaplane.storage.sql.tables import invoices, stripe_outbox, usage_events, usage_hourly
from quotaplane_client.v1 import quota_pb2, quota_pb2_grpc, types_pb2
from tests.integration.billing_server import (
    BillingServer,
    event,
    sqlite_billing_server,
    this_period,
)

pytestmark = pytest.mark.timeout(60)

FINALIZE_ALL = {"finalize": True, "force": True, "push_to_stripe": True}


@dataclass
class Served:
    server: BillingServer
    quota: quota_pb2_grpc.QuotaServiceStub
    authz: external_auth_pb2_grpc.AuthorizationStub
    tenant: str

    def token(self, role: str) -> tuple[tuple[str, str], ...]:
        tokens = self.server.runtime.tokens
        value = {"admin": tokens.admin, "service": tokens.service, "billing": tokens.billing}
        return (("authorization", f"Bearer {value.get(role, role)}"),)

    async def count(self, table: sa.Table) -> int:
        assert self.server.runtime.database is not None
        async with self.server.runtime.database.connect() as conn:
            query = sa.select(sa.func.count()).select_from(table)
            return int((await conn.execute(query)).scalar_one())


@pytest.fixture
async def served(tmp_path: Path, redis_url: str, redis_key_prefix: str) -> AsyncIterator[Served]:
    async with sqlite_billing_server(
        tmp_path, redis_url=redis_url, key_prefix=redis_key_prefix
    ) as server:
        assert server.runtime.grpc is not None
        tenant = await server.tenant("growth")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.runtime.grpc.port}") as plain:
            yield Served(
                server,
                quota_pb2_grpc.QuotaServiceStub(plain),
                external_auth_pb2_grpc.AuthorizationStub(plain),
                tenant,
            )


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value


async def test_unauthenticated_record_usage_is_refused_and_stores_nothing(served: Served) -> None:
    request = quota_pb2.RecordUsageRequest(events=[event(served.tenant, 1_000_000_000)])
    error = await refused(served.quota.RecordUsage(request, timeout=5))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "billing or admin token" in str(error.details())
    assert await served.count(usage_events) == 0 and await served.count(usage_hourly) == 0


async def test_unauthenticated_generate_invoice_is_refused_and_stores_nothing(
    served: Served,
) -> None:
    await served.server.check(served.tenant, 5)
    request = quota_pb2.GenerateInvoiceRequest(
        tenant_id=served.tenant, period=this_period(), **FINALIZE_ALL
    )
    error = await refused(served.quota.GenerateInvoice(request, timeout=5))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "admin token" in str(error.details())
    assert await served.count(invoices) == 0 and await served.count(stripe_outbox) == 0


@pytest.mark.parametrize("role", ["service", "billing"])
async def test_only_the_admin_token_finalizes_forces_or_pushes(served: Served, role: str) -> None:
    for flag in FINALIZE_ALL:
        request = quota_pb2.GenerateInvoiceRequest(
            tenant_id=served.tenant, period=this_period(), **{flag: True}
        )
        call = served.quota.GenerateInvoice(request, metadata=served.token(role), timeout=5)
        error = await refused(call)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert f"the {role} token is refused: GenerateInvoice needs the admin token" in str(
            error.details()
        )
    assert await served.count(invoices) == 0


async def test_the_billing_token_records_usage_and_drafts_invoices(served: Served) -> None:
    billing = served.token("billing")
    request = quota_pb2.RecordUsageRequest(events=[event(served.tenant, 7)])
    assert (await served.quota.RecordUsage(request, metadata=billing, timeout=5)).accepted == 1
    draft = quota_pb2.GenerateInvoiceRequest(tenant_id=served.tenant, period=this_period())
    invoice = await served.quota.GenerateInvoice(draft, metadata=billing, timeout=5)
    assert invoice.status == types_pb2.Invoice.DRAFT
    admin = served.token("admin")
    final = quota_pb2.GenerateInvoiceRequest(
        tenant_id=served.tenant, period=this_period(), finalize=True, force=True
    )
    finalized = await served.quota.GenerateInvoice(final, metadata=admin, timeout=5)
    assert finalized.status == types_pb2.Invoice.FINALIZED


@pytest.mark.parametrize(
    ("role", "code"),
    [
        ("", grpc.StatusCode.UNAUTHENTICATED),
        ("not-a-token", grpc.StatusCode.UNAUTHENTICATED),
        ("billing", grpc.StatusCode.PERMISSION_DENIED),
        ("qp_live_someapikey", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_the_hot_path_needs_the_service_token(
    served: Served, role: str, code: grpc.StatusCode
) -> None:
    metadata = served.token(role) if role else ()
    check = quota_pb2.CheckQuotaRequest(tenant_id=served.tenant, cost=1)
    error = await refused(served.quota.CheckQuota(check, metadata=metadata, timeout=5))
    assert (error.code(), "needs the service token" in str(error.details())) == (code, True)
    authz = external_auth_pb2.CheckRequest()
    error = await refused(served.authz.Check(authz, metadata=metadata, timeout=5))
    assert error.code() is code
    allowed = await served.quota.CheckQuota(check, metadata=served.token("service"), timeout=5)
    assert allowed.allowed


async def test_generated_tokens_are_kept_in_the_data_dir_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.defaults(grpc_addr="0.0.0.0:50051", data_dir=tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        tokens = resolve_tokens(settings)
    for role, token in (("service", tokens.service), ("billing", tokens.billing)):
        path = tmp_path / "data" / f"{role}-token"
        assert path.read_text().strip() == token and token.startswith(f"qp_{role}_")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert token not in caplog.text and str(path) in caplog.text
    assert resolve_tokens(settings) == tokens  # the next start reuses them


def test_opting_out_is_refused_off_loopback_and_leaves_only_admin_closed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="QUOTAPLANE_ALLOW_UNAUTHENTICATED"):
        resolve_tokens(Settings.defaults(grpc_addr="0.0.0.0:50051", allow_unauthenticated=True))
    local = Settings.defaults(
        grpc_addr="127.0.0.1:0", data_dir=tmp_path, allow_unauthenticated=True
    )
    tokens = resolve_tokens(local)
    assert (tokens.service, tokens.billing) == ("", "") and tokens.admin
