"""The JWT variant of the Envoy config, and how each ext_authz transport reads a verified claim."""

from __future__ import annotations

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import struct_pb2

from quotaplane.domain.quota.routes import RouteTable
from quotaplane.transport.grpc.ext_authz import JWT_FILTER, JWT_PAYLOAD, gateway_request
from quotaplane.transport.http.authz import gateway_request as http_gateway_request
from tests.harness.gateway import render

ROUTES = RouteTable.parse("/v1/rate=requests:1")


def test_the_shipped_jwt_variant_is_current() -> None:
    shipped = render.JWT_CONFIG.read_text(encoding="utf-8")
    assert shipped == render.render_jwt_example(render.TEMPLATE)
    assert "envoy.filters.http.jwt_authn" in shipped and "remote_jwks" in shipped


def test_without_an_issuer_there_is_no_jwt_filter() -> None:
    text = render.render(render.TEMPLATE)
    assert "jwt_authn\n" not in text.replace("[envoy.filters.http.jwt_authn]", "")
    assert "x-quotaplane-jwt-tenant" in text  # stripped from client input all the same


def test_a_half_configured_provider_is_refused() -> None:
    with pytest.raises(ValueError, match="JWT_AUDIENCE"):
        render.render(render.TEMPLATE, jwt_issuer="https://idp.example.com/")
    with pytest.raises(ValueError, match="JWT_ISSUER must be"):
        render.render(render.TEMPLATE, jwt_issuer='x" evil: [')


def test_a_jwks_file_is_read_locally() -> None:
    text = render.render(
        render.TEMPLATE, jwt_issuer="i", jwt_audience="a", jwt_jwks="/etc/idp/jwks.json"
    )
    assert 'filename: "/etc/idp/jwks.json"' in text and "- name: jwks" not in text


def check(path: str, payload: dict[str, object] | None) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.path = path
    request.attributes.request.http.headers["x-quotaplane-jwt-tenant"] = "forged"
    if payload is not None:
        claims = struct_pb2.Struct()
        claims.update({JWT_PAYLOAD: payload})
        request.attributes.metadata_context.filter_metadata[JWT_FILTER].CopyFrom(claims)
    return request


def test_grpc_reads_the_claim_from_jwt_authn_metadata_only() -> None:
    verified = gateway_request(check("/v1/rate", {"tenant_id": "acme", "sub": "u"}), "tenant_id")
    assert verified.tenant_claim == "acme" and verified.metered
    assert gateway_request(check("/v1/rate", None), "tenant_id").tenant_claim is None
    assert gateway_request(check("/v1/rate", {"tenant_id": 7}), "tenant_id").tenant_claim is None
    assert gateway_request(check("/v1/rate", {"tenant_id": "acme"}), "").tenant_claim is None


def test_usage_is_checked_but_unmetered_on_both_paths() -> None:
    assert not gateway_request(check("/v1/usage?period=2026-11", None)).metered
    assert not http_gateway_request("/v1/usage?period=2026-11", [], ROUTES).metered
    assert http_gateway_request("/v1/rate", [], ROUTES).metered


def test_http_trusts_the_claim_header_only_with_jwt_identities_on() -> None:
    headers = [(b"x-quotaplane-jwt-tenant", b"acme")]
    assert http_gateway_request("/v1/rate", headers, ROUTES, jwt=True).tenant_claim == "acme"
    assert http_gateway_request("/v1/rate", headers, ROUTES).tenant_claim is None


def test_the_shipped_routes_match_what_the_tenant_api_expects() -> None:
    from quotaplane.transport.http.tenant_api import PROXY_TOKEN_HEADER, TENANT_PREFIX, USAGE_PATH

    text = render.render(render.TEMPLATE, service_token="s3cret")
    assert f"match: {{path: {USAGE_PATH}}}" in text
    assert f"prefix_rewrite: {TENANT_PREFIX}{USAGE_PATH}" in text
    assert f"prefix_rewrite: {TENANT_PREFIX}/portal" in text
    assert f'{{key: {PROXY_TOKEN_HEADER}, value: "s3cret"}}' in text
    assert f"- remove: {PROXY_TOKEN_HEADER}" in text  # never from a client
