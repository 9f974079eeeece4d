"""The Gateway's identities on real stores: a tenant claim of a verified JWT (by tenant id or
external id) is decided exactly as an API key, and an unmetered request (the tenant reading its
own usage) is authenticated and checked for suspension but consumes nothing."""

from __future__ import annotations

import uuid

import pytest

from quotaplane.domain.quota.gateway import Gateway, GatewayRequest, Verdict
from quotaplane.domain.tenants.api_keys import ApiKeyAdmin
from quotaplane.services.key_cache import ApiKeyCache
from tests.integration.test_gateway_decisions import keys
from tests.integration.test_quota_engine import (
    Quota,
    catalog,
    counter_store,
    quota,
    sqlite_ledger,
)

pytestmark = pytest.mark.timeout(60)
__all__ = ["catalog", "counter_store", "keys", "quota", "sqlite_ledger"]  # reused fixtures
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def gateway(quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]) -> Gateway:
    return Gateway(keys[1], quota.engine, claims=quota.directory)


def remaining(decision: object) -> int:
    limits = decision.decision.limits  # type: ignore[attr-defined]
    return int(limits[0].remaining)


async def test_a_claim_naming_a_tenant_id_is_decided_like_its_key(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]
) -> None:
    tenant_id = await quota.tenant("exact")
    _, secret = await keys[0].create(tenant_id=tenant_id, name="k")
    await keys[1].refresh()
    by_claim = await gateway(quota, keys).authorize(
        GatewayRequest(None, "requests", "3", tenant_claim=tenant_id)
    )
    by_key = await gateway(quota, keys).authorize(GatewayRequest(secret, "requests", "3"))
    assert by_claim.verdict is by_key.verdict is Verdict.ALLOWED
    assert by_claim.tenant_id == by_key.tenant_id == tenant_id
    assert (remaining(by_claim), remaining(by_key)) == (997, 994)  # one counter for both


async def test_a_claim_may_name_the_external_id(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]
) -> None:
    external = f"org_{uuid.uuid4().hex[:12]}"
    tenant = await quota.tenants.create(name="acme", plan="exact", external_id=external)
    await quota.directory.refresh()
    decision = await gateway(quota, keys).authorize(
        GatewayRequest(None, "requests", tenant_claim=external)
    )
    assert decision.verdict is Verdict.ALLOWED and decision.tenant_id == tenant.id


@pytest.mark.parametrize("claim", [UNKNOWN, "org_nobody", "not a uuid"])
async def test_a_claim_naming_no_tenant_is_unauthenticated(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache], claim: str
) -> None:
    decision = await gateway(quota, keys).authorize(
        GatewayRequest(None, "requests", tenant_claim=claim)
    )
    assert decision.verdict is Verdict.UNAUTHENTICATED and decision.tenant_id is None


async def test_claims_are_ignored_when_jwt_identities_are_off(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]
) -> None:
    tenant_id = await quota.tenant("exact")
    decision = await Gateway(keys[1], quota.engine).authorize(
        GatewayRequest(None, "requests", tenant_claim=tenant_id)
    )
    assert decision.verdict is Verdict.UNAUTHENTICATED


async def test_an_api_key_beside_a_claim_is_the_identity(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]
) -> None:
    owner, other = await quota.tenant("exact"), await quota.tenant("exact")
    _, secret = await keys[0].create(tenant_id=owner, name="k")
    await keys[1].refresh()
    decision = await gateway(quota, keys).authorize(
        GatewayRequest(secret, "requests", tenant_claim=other)
    )
    assert decision.tenant_id == owner


async def test_an_unmetered_request_consumes_nothing_but_is_still_checked(
    quota: Quota, keys: tuple[ApiKeyAdmin, ApiKeyCache]
) -> None:
    tenant_id = await quota.tenant("exact")
    _, secret = await keys[0].create(tenant_id=tenant_id, name="k")
    await keys[1].refresh()
    for _ in range(5):
        free = await gateway(quota, keys).authorize(
            GatewayRequest(secret, "requests", metered=False)
        )
        assert free.verdict is Verdict.ALLOWED and free.decision is None
    paid = await gateway(quota, keys).authorize(GatewayRequest(secret, "requests"))
    assert remaining(paid) == 999
    unknown = await gateway(quota, keys).authorize(
        GatewayRequest("qp_live_" + "x" * 43, "requests", metered=False)
    )
    assert unknown.verdict is Verdict.UNAUTHENTICATED
    await quota.tenants.suspend(tenant_id, "test")
    await quota.directory.refresh()
    suspended = await gateway(quota, keys).authorize(
        GatewayRequest(secret, "requests", metered=False)
    )
    assert suspended.verdict is Verdict.SUSPENDED
