"""Render the Envoy config templates under envoy/ (string.Template ${NAME} placeholders).

Importable by file path (envoy/ is deliberately not a package):

    spec = importlib.util.spec_from_file_location("envoy_render", "envoy/render.py")
    render = module.render(TEMPLATE, listen_port=10000, failure_mode_allow=True)

or from the shell:

    python envoy/render.py --out /tmp/envoy.yaml --listen-port 10000 --fail-open

The docker compose stack mounts a checked-in rendering, envoy/envoy.compose.yaml (the official
Envoy image has no Python to render at start). Regenerate it after editing the template with

    python envoy/render.py --compose --out envoy/envoy.compose.yaml

tests/unit/test_compose.py fails while the checked-in file differs from that output.

Every placeholder has a default (DEFAULTS); an unknown name or a bad value is an error, never a
silently broken config.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import string
import sys
import textwrap
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "envoy.yaml"

DEFAULTS: dict[str, str | int | bool] = {
    "LISTEN_ADDRESS": "0.0.0.0",
    "LISTEN_PORT": 10000,
    "ADMIN_PORT": 9901,
    "QUOTAPLANE_HOST": "127.0.0.1",
    "QUOTAPLANE_PORT": 50051,
    "OPENCLAW_HOST": "127.0.0.1",
    "OPENCLAW_PORT": 8081,
    "FAILURE_MODE_ALLOW": False,
    "QUOTAPLANE_HTTP_PORT": 50052,
    "AUTHZ": "http",
    # quotaplane's service token, sent with every Check (empty: none, for a server that opted
    # out on loopback). Never commit a real one: compose substitutes it at start.
    "SERVICE_TOKEN": "",
    "AUTHZ_TIMEOUT": "0.25s",
    # JWT identities (off while JWT_ISSUER is empty): Envoy's jwt_authn verifies a bearer JWT
    # of this issuer and audience against JWT_JWKS (a file path, or an http(s):// JWKS URL) and
    # hands quotaplane the JWT_TENANT_CLAIM (QUOTAPLANE_JWT_TENANT_CLAIM must name the same).
    "JWT_ISSUER": "",
    "JWT_AUDIENCE": "",
    "JWT_JWKS": "",
    "JWT_TENANT_CLAIM": "tenant_id",
}
JWT_NAMES = ("JWT_ISSUER", "JWT_AUDIENCE", "JWT_JWKS", "JWT_TENANT_CLAIM")
# The provider's JWKS: a local file Envoy re-reads on change, or a URL fetched (and cached).
JWKS_FILE = """local_jwks:
  filename: "${JWT_JWKS}"
  watched_directory: {path: "${JWKS_DIR}"}"""
JWKS_REMOTE = """remote_jwks:
  http_uri: {uri: "${JWT_JWKS}", cluster: jwks, timeout: 5s}
  cache_duration: 300s
  async_fetch: {fast_listener: false}
  retry_policy: {num_retries: 3}"""
# Before ext_authz: a bad token (signature, expiry, issuer, audience) is Envoy's 401; a valid
# one is removed from the request (forward: false), its payload goes to the dynamic metadata
# (the gRPC Check reads it there) and its tenant claim to a header (the HTTP check reads it);
# the header is stripped from client input first (early_header_mutation_extensions). No token
# at all passes on to ext_authz, which then needs an API key (x-api-key).
JWT_AUTHN = """- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
    providers:
      tenant_idp:
        issuer: "${JWT_ISSUER}"
        audiences: ["${JWT_AUDIENCE}"]
        ${JWKS}
        forward: false
        payload_in_metadata: jwt_payload
        claim_to_headers:
        - {header_name: x-quotaplane-jwt-tenant, claim_name: "${JWT_TENANT_CLAIM}"}
    rules:
    - match: {prefix: /}
      requires:
        requires_any:
          requirements:
          - provider_name: tenant_idp
          - allow_missing: {}"""
# The ext_authz service block of each protocol (the filter's ${AUTHZ_SERVICE}).
AUTHZ_SERVICES = {
    "grpc": """grpc_service:
  envoy_grpc: {cluster_name: quotaplane}
  timeout: ${AUTHZ_TIMEOUT}
  # quotaplane's Check needs the service token (QUOTAPLANE_SERVICE_TOKEN).
  initial_metadata:
  - {key: authorization, value: "Bearer ${SERVICE_TOKEN}"}""",
    # x-tenant-id goes to the upstream, the rate-limit headers to the client on success; on a
    # denial every header of quotaplane's answer reaches the client (Envoy's default).
    "http": """http_service:
  server_uri: {uri: "http://quotaplane", cluster: quotaplane_http, timeout: ${AUTHZ_TIMEOUT}}
  authorization_response:
    allowed_upstream_headers:
      patterns: [{exact: x-tenant-id}]
    allowed_client_headers_on_success:
      patterns:
      - {prefix: x-ratelimit-}
      - {prefix: ratelimit, ignore_case: true}
      - {exact: retry-after}""",
}
# What quotaplane must be started with (QUOTAPLANE_AUTHZ_ROUTES) for the HTTP path to price the
# routes as this config's context_extensions do for the gRPC path (tests compare the two).
AUTHZ_ROUTES = "/v1/rate/bulk=requests:10,/v1/rate=requests:1"
# Port 0 lets Envoy pick a free port (tests read it back from the admin API); an upstream
# cluster needs a real one.
BINDABLE_PORTS = {"LISTEN_PORT", "ADMIN_PORT"}

# docker-compose.yml: the upstreams are reached by service name on the compose network; every
# port keeps its default (quotaplane's QUOTAPLANE_GRPC_ADDR and openclaw's --port match them).
COMPOSE: dict[str, str | int | bool] = {
    "QUOTAPLANE_HOST": "quotaplane",
    "OPENCLAW_HOST": "openclaw",
    # Replaced by the envoy container's command with $QUOTAPLANE_SERVICE_TOKEN at start.
    "SERVICE_TOKEN": "__QUOTAPLANE_SERVICE_TOKEN__",
}
COMPOSE_CONFIG = TEMPLATE.with_name("envoy.compose.yaml")
# envoy/envoy.jwt.yaml: the JWT variant, rendered with an example identity provider (replace
# the three JWT_* values with your provider's, or render your own with the --jwt-* flags).
JWT_EXAMPLE: dict[str, str | int | bool] = {
    "JWT_ISSUER": "https://idp.example.com/",
    "JWT_AUDIENCE": "quotaplane-api",
    "JWT_JWKS": "https://idp.example.com/.well-known/jwks.json",
}
JWT_CONFIG = TEMPLATE.with_name("envoy.jwt.yaml")
JWT_HEADER = (
    "# GENERATED from envoy/envoy.yaml: the JWT variant, for an example identity provider; do not\n"
    "# edit. Regenerate with  python envoy/render.py --jwt-example --out envoy/envoy.jwt.yaml\n"
    "# (tests/unit/test_envoy_jwt.py fails while this file is stale).\n"
)
COMPOSE_HEADER = (
    "# GENERATED from envoy/envoy.yaml for docker-compose.yml: do not edit. Regenerate with\n"
    "#   python envoy/render.py --compose --out envoy/envoy.compose.yaml\n"
    "# (tests/unit/test_compose.py fails while this file is stale).\n"
)
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
# Tokens go into a quoted YAML string and through sed (compose): URL-safe characters only.
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]*$")


def _check_port(name: str, value: object) -> str:
    lowest = 0 if name in BINDABLE_PORTS else 1
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 65535:
        raise ValueError(f"{name} must be an integer port in {lowest}..65535, got {value!r}")
    return str(value)


def _check_host(name: str, value: object) -> str:
    text = str(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.match(text):
            raise ValueError(
                f"{name} must be an IP address or a host name, got {value!r}"
            ) from None
    return text


def _check_token(name: str, value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"{name} must be made of letters, digits and . _ ~ + / = - only")
    return value


def _check_bool(name: str, value: object) -> str:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return "true" if value else "false"


def _check_duration(name: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,3}(\.\d{1,3})?s", value):
        raise ValueError(f"{name} must be seconds like 0.25s, got {value!r}")
    return value


_JWT_TEXT = re.compile(r"^[A-Za-z0-9._~:/?#@!$&()*+,;=%-]{1,500}$")


def _check_jwt(name: str, value: object) -> str:
    """Printable URL-ish text only: it goes into a quoted YAML string."""
    if not isinstance(value, str) or (value and not _JWT_TEXT.match(value)):
        raise ValueError(f"{name} must be a URL, a path or a name without spaces or quotes")
    return value


def _jwt_blocks(filled: dict[str, str]) -> dict[str, str]:
    """``${JWT_AUTHN}`` and ``${JWT_CLUSTER}``: empty unless JWT_ISSUER is set."""
    if not filled["JWT_ISSUER"]:
        return {"JWT_AUTHN": "", "JWT_CLUSTER": ""}
    if not filled["JWT_AUDIENCE"] or not filled["JWT_JWKS"] or not filled["JWT_TENANT_CLAIM"]:
        raise ValueError("JWT_ISSUER needs JWT_AUDIENCE, JWT_JWKS and JWT_TENANT_CLAIM too")
    jwks = filled["JWT_JWKS"]
    remote = jwks.startswith(("http://", "https://"))
    block = JWT_AUTHN.replace(
        "${JWKS}", textwrap.indent(JWKS_REMOTE if remote else JWKS_FILE, " " * 8).lstrip()
    )
    return {"JWT_AUTHN": block, "JWT_CLUSTER": _jwks_cluster(jwks) if remote else ""}


def _jwks_cluster(uri: str) -> str:
    """The cluster Envoy fetches a remote JWKS through (TLS with SNI for https)."""
    scheme, _, rest = uri.partition("://")
    hostport = rest.partition("/")[0]
    host, _, port = hostport.partition(":")
    port = port or ("443" if scheme == "https" else "80")
    cluster = f"""- name: jwks
  type: LOGICAL_DNS
  dns_lookup_family: V4_PREFERRED
  connect_timeout: 2s
  load_assignment:
    cluster_name: jwks
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {{address: "{host}", port_value: {int(port)}}}"""
    if scheme == "https":
        cluster += f"""
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: "{host}"
"""
    return cluster.rstrip("\n")


def _check_authz(value: object) -> str:
    if value not in AUTHZ_SERVICES:
        raise ValueError(f"AUTHZ must be one of {sorted(AUTHZ_SERVICES)}, got {value!r}")
    return str(value)


def _indented_block(text: str, name: str, block: str) -> str:
    """Put a multi-line YAML block where ``${name}`` stands alone on a line, at its indent."""
    pattern = re.compile(r"^( *)\$\{" + name + r"\}$", re.MULTILINE)
    return pattern.sub(lambda m: textwrap.indent(block, m.group(1)), text)


def values(**overrides: str | int | bool) -> dict[str, str]:
    """DEFAULTS with overrides (case-insensitive names), validated and as template text."""
    merged = dict(DEFAULTS)
    for key, value in overrides.items():
        name = key.upper()
        if name not in DEFAULTS:
            raise ValueError(f"unknown template variable {key!r}; known: {sorted(DEFAULTS)}")
        merged[name] = value
    checked: dict[str, str] = {}
    for name, value in merged.items():
        if name == "AUTHZ":
            checked[name] = _check_authz(value)
        elif name in JWT_NAMES:
            checked[name] = _check_jwt(name, value)
        elif name == "AUTHZ_TIMEOUT":
            checked[name] = _check_duration(name, value)
        elif name.endswith("_PORT"):
            checked[name] = _check_port(name, value)
        elif name.endswith(("_HOST", "_ADDRESS")):
            checked[name] = _check_host(name, value)
        elif name.endswith("_TOKEN"):
            checked[name] = _check_token(name, value)
        else:
            checked[name] = _check_bool(name, value)
    return checked


def render(template_path: str | Path = TEMPLATE, **overrides: str | int | bool) -> str:
    """The template with every ${NAME} filled in; KeyError if it uses an unknown name."""
    filled = values(**overrides)
    text = Path(template_path).read_text(encoding="utf-8")
    text = _indented_block(text, "AUTHZ_SERVICE", AUTHZ_SERVICES[filled["AUTHZ"]])
    for name, block in _jwt_blocks(filled).items():
        text = _indented_block(text, name, block)
    jwks_dir = str(Path(filled["JWT_JWKS"]).parent) if filled["JWT_JWKS"] else ""
    return string.Template(text).substitute(filled, JWKS_DIR=jwks_dir)


def render_compose(template_path: str | Path = TEMPLATE, **overrides: str | int | bool) -> str:
    """The config docker-compose.yml mounts: COMPOSE values (then overrides), with a header."""
    return COMPOSE_HEADER + render(template_path, **{**COMPOSE, **overrides})


def render_jwt_example(template_path: str | Path = TEMPLATE, **overrides: str | int | bool) -> str:
    """envoy/envoy.jwt.yaml: JWT_EXAMPLE values (then overrides), with a header."""
    return JWT_HEADER + render(template_path, **{**JWT_EXAMPLE, **overrides})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the quotaplane Envoy config")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--out", type=Path, help="output file (default: stdout)")
    parser.add_argument("--fail-open", action="store_true", help="failure_mode_allow: true")
    parser.add_argument(
        "--compose",
        action="store_true",
        help="the docker compose variant (upstreams by service name, a do-not-edit header); "
        "other flags still apply",
    )
    parser.add_argument(
        "--jwt-example", action="store_true", help="the JWT variant shipped as envoy/envoy.jwt.yaml"
    )
    for name, default in DEFAULTS.items():
        if isinstance(default, bool):
            continue
        if name == "AUTHZ":
            parser.add_argument("--authz", choices=sorted(AUTHZ_SERVICES), dest=name,
                                help="ext_authz protocol (default http)")  # fmt: skip
            continue
        if name == "AUTHZ_TIMEOUT":
            parser.add_argument("--authz-timeout", dest=name, help=f"default {default}")
            continue
        if name in JWT_NAMES:
            flag = "--" + name.lower().replace("_", "-")
            parser.add_argument(flag, dest=name, help=f"JWT identities (default {default!r})")
            continue
        flag = "--" + name.lower().replace("_", "-")
        kind = int if isinstance(default, int) else str
        # No argparse default: an unset flag leaves the value to --compose or DEFAULTS.
        parser.add_argument(flag, type=kind, dest=name, help=f"default {default}")
    args = parser.parse_args(argv)
    given = {name: getattr(args, name, None) for name in DEFAULTS}
    overrides = {name: value for name, value in given.items() if value is not None}
    overrides["FAILURE_MODE_ALLOW"] = args.fail_open
    rendering = render_compose if args.compose else render
    rendering = render_jwt_example if args.jwt_example else rendering
    try:
        text = rendering(args.template, **overrides)
    except (ValueError, KeyError) as exc:
        parser.error(str(exc))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
