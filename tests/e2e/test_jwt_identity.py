"""JWT identities through a real Envoy (jwt_authn) and quotaplane, on both ext_authz paths.

The test generates an RSA and an EC key, publishes both public keys in a JWKS file that the
rendered JWT variant of envoy/envoy.yaml points at, and signs tokens itself. Envoy verifies
signature, expiry, issuer and audience (a failure is Envoy's own 401, not quotaplane's JSON);
quotaplane maps the verified ``tenant_id`` claim (by tenant id or external id) to a tenant and
decides exactly as for an API key.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from quotaplane.storage.sql import migrate
from tests.harness.tenant_stack import QUOTA, Tenant, TenantStack, tenant_stack

pytestmark = pytest.mark.timeout(90)

ISSUER = "https://idp.test.example/"
AUDIENCE = "quotaplane-api"


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    stranger: rsa.RSAPrivateKey  # not in the JWKS

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
        ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
        return {"keys": [rsa_jwk, ec_jwk]}


@dataclass
class JwtStack:
    stack: TenantStack
    keys: Keys
    by_id: Tenant
    by_external: Tenant

    def token(self, claim: str, *, alg: str = "RS256", **changes: Any) -> str:
        stranger = changes.pop("stranger", False)
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, "tenant_id": claim}
        claims.update(changes)
        key: Any = {"RS256": self.keys.rsa, "ES256": self.keys.ec}[alg]
        kid = {"RS256": "rsa-1", "ES256": "ec-1"}[alg]
        if stranger:
            key = self.keys.stranger
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    def call(self, token: str | None, **headers: str) -> tuple[int, dict[str, str]]:
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.stack.rate(headers)


@pytest.fixture(scope="module", params=["http", "grpc"])
def jwt_stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    redis_key_prefix: str,
) -> Iterator[JwtStack]:
    workdir = tmp_path_factory.mktemp(f"jwt-{request.param}")
    keys = Keys(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )
    jwks = workdir / "jwks" / "jwks.json"
    jwks.parent.mkdir()
    jwks.write_text(json.dumps(keys.jwks()))
    database = f"sqlite:///{workdir / 'ledger.db'}"
    migrate.upgrade(database)
    with tenant_stack(
        workdir,
        redis_url=redis_url,
        key_prefix=f"{redis_key_prefix}-j{request.param}",
        database=database,
        authz=request.param,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks=str(jwks),
    ) as stack:
        by_id = stack.tenant("jwt by id")
        by_external = stack.tenant("jwt by external id", external_id="acme-corp")
        yield JwtStack(stack, keys, by_id, by_external)


def raw_get(port: int, path: str, authorization: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"authorization": authorization})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def remaining_month(stack: JwtStack, tenant: Tenant) -> int:
    body = stack.stack.get("/v1/usage", {"x-api-key": tenant.key})[2]
    [month] = [limit for limit in body["limits"] if limit["window"] == "month"]
    return int(month["remaining"])


def test_a_valid_token_is_decided_like_an_api_key_to_the_unit(jwt_stack: JwtStack) -> None:
    tenant = jwt_stack.by_id
    start = remaining_month(jwt_stack, tenant)
    token = jwt_stack.token(tenant.id)
    for spent in range(1, 4):
        status, headers = jwt_stack.call(token)
        assert status == 200
        assert headers["x-ratelimit-remaining"] == str(start - spent)  # day's limit is larger
    es256 = jwt_stack.token(tenant.id, alg="ES256")
    assert jwt_stack.call(es256)[0] == 200
    assert remaining_month(jwt_stack, tenant) == start - 4


def test_the_claim_may_name_the_external_id(jwt_stack: JwtStack) -> None:
    tenant = jwt_stack.by_external
    start = remaining_month(jwt_stack, tenant)
    deadline = time.monotonic() + 10  # the external id is matched in memory, after a poll
    token = jwt_stack.token("acme-corp")
    while (status := jwt_stack.call(token)[0]) != 200:
        assert status == 401 and time.monotonic() < deadline
        time.sleep(0.2)
    assert remaining_month(jwt_stack, tenant) == start - 1


def test_quota_is_exact_through_tokens(jwt_stack: JwtStack) -> None:
    tenant = jwt_stack.stack.tenant("jwt quota")
    token = jwt_stack.token(tenant.id)
    statuses = [jwt_stack.call(token)[0] for _ in range(QUOTA + 2)]
    assert statuses == [200] * QUOTA + [429, 429]


# (jwt_authn itself answers 403 for a token minted for another audience; the shipped config's
# local_reply_config makes it the 401 of every other invalid token.)
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"exp": 1_000_000_000}, 401),  # expired in 2001
        ({"iss": "https://evil.example/"}, 401),
        ({"aud": "another-api"}, 401),
        ({"stranger": True}, 401),  # signed by a key that is not in the JWKS
        ({"alg": "none"}, 401),  # unsigned
    ],
    ids=["expired", "wrong-issuer", "wrong-audience", "bad-signature", "unsigned"],
)
def test_a_bad_token_is_refused_by_envoy(
    jwt_stack: JwtStack, change: dict[str, Any], expected: int
) -> None:
    if change.get("alg") == "none":
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "tenant_id": jwt_stack.by_id.id}
        token = jwt.encode(claims, None, algorithm="none")
    else:
        token = jwt_stack.token(jwt_stack.by_id.id, **change)
    for path in ["/v1/usage", "/v1/rate"]:
        status, text = raw_get(jwt_stack.stack.envoy_port, path, f"Bearer {token}")
        assert status == expected
        # Envoy's own plain-text answer ("Jwt is expired"): quotaplane's check never ran.
        assert "Jwt" in text and not text.startswith("{")


def test_a_valid_token_for_an_unknown_tenant_is_401(jwt_stack: JwtStack) -> None:
    for claim in ["00000000-0000-4000-8000-000000000000", "nobody-we-know"]:
        status, _, body = jwt_stack.stack.get(
            "/v1/usage", {"authorization": f"Bearer {jwt_stack.token(claim)}"}
        )
        assert (status, body["error"]) == (401, "unauthenticated")


def test_a_forged_claim_header_is_ignored(jwt_stack: JwtStack) -> None:
    victim = jwt_stack.by_id
    forged = {"x-quotaplane-jwt-tenant": victim.id}
    assert jwt_stack.call(None, **forged)[0] == 401  # no credential at all
    caller = jwt_stack.stack.tenant("jwt caller")
    status, _, body = jwt_stack.stack.get(
        "/v1/usage", {"authorization": f"Bearer {jwt_stack.token(caller.id)}", **forged}
    )
    assert status == 200 and body["tenant"]["id"] == caller.id


def test_usage_through_a_token(jwt_stack: JwtStack) -> None:
    token = jwt_stack.token(jwt_stack.by_id.id)
    status, _, body = jwt_stack.stack.get("/v1/usage", {"authorization": f"Bearer {token}"})
    assert status == 200 and body["tenant"]["id"] == jwt_stack.by_id.id


def test_api_keys_still_work_beside_tokens(jwt_stack: JwtStack) -> None:
    assert jwt_stack.call(None, **{"x-api-key": jwt_stack.by_id.key})[0] == 200
