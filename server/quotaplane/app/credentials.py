"""The bearer tokens a server runs with, one per role (``transport/grpc/auth.py`` says which
RPC needs which): configured, generated, or (only when the operator opts out on a loopback
address) left open.

Secure by default: a role without a configured token gets a random one, kept in the data
directory (``admin-token``, ``service-token``, ``billing-token``, mode 0600, reused by the next
start) and never logged; the log names the file. ``QUOTAPLANE_ALLOW_UNAUTHENTICATED=true``
leaves the service and billing roles open instead, and is refused unless the gRPC address is
a loopback one, so no open port is reachable from another host. The admin role is never open.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from quotaplane.app.datadir import generated_token
from quotaplane.config import ConfigError, Settings


@dataclass(frozen=True)
class Tokens:
    admin: str
    service: str  # "" = open
    billing: str  # "" = open


def resolve_tokens(settings: Settings) -> Tokens:
    """Each role's token; ConfigError if an opt-out is asked for on a non-loopback address."""
    s = settings
    if s.allow_unauthenticated and not is_loopback(s.grpc_addr):
        raise ConfigError(
            f"QUOTAPLANE_ALLOW_UNAUTHENTICATED=true needs a loopback QUOTAPLANE_GRPC_ADDR "
            f"(127.0.0.1, [::1] or localhost), not {s.grpc_addr}: set the service and billing "
            "tokens instead"
        )

    def token(configured: str, role: str) -> str:
        if configured or (s.allow_unauthenticated and role != "admin"):
            return configured
        return generated_token(
            s.data_dir, f"{role}-token", f"qp_{role}_", f"QUOTAPLANE_{role.upper()}_TOKEN"
        )

    return Tokens(
        admin=token(s.admin_token, "admin"),
        service=token(s.service_token, "service"),
        billing=token(s.billing_token, "billing"),
    )


def is_loopback(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
