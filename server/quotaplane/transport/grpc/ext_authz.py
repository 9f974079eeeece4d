"""Envoy ext_authz (envoy.service.auth.v3.Authorization) servicer."""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2_grpc

from quotaplane.transport.grpc.pending import pending


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Answers Envoy's Check for every request to the OpenClaw API."""

    Check = pending("envoy.service.auth.v3.Authorization/Check", "the Envoy gateway: issue #6")
