"""Settings: one frozen object, read once at start from QUOTAPLANE_* variables and flags.

Every setting is declared once in ``config_table.SETTINGS`` (name, environment variable, parser,
default, help). The same table builds the ``Settings`` values, the ``serve`` flags and the README's
table, so the three cannot drift. Nothing reads ``os.environ`` at import time: the composition
root calls ``load_settings(environ, overrides)`` exactly once.

A malformed value stops start-up with a one-line ``ConfigError`` naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from quotaplane.config_table import SETTINGS
from quotaplane.domain.quota.routes import RouteTable


class ConfigError(ValueError):
    """A setting has a malformed value. The message is one line and names the variable."""


@dataclass(frozen=True)
class Settings:
    """The running configuration. Build it with ``load_settings`` (or ``Settings.defaults``,
    with some values replaced); never mutate it. The defaults live in ``SETTINGS`` only."""

    grpc_addr: str
    authz_http_addr: str
    authz_routes: RouteTable
    workers: int
    redis_url: str
    database_url: str
    data_dir: Path
    plans_path: Path | None
    admin_token: str
    service_token: str
    billing_token: str
    allow_unauthenticated: bool
    jwt_tenant_claim: str
    redis_key_prefix: str
    redis_timeout: timedelta
    cache_ttl: timedelta
    shutdown_grace: timedelta
    request_id_ttl: timedelta
    flush_interval: timedelta
    billing_grace: timedelta | None
    stripe_api_key: str
    stripe_api_base: str
    stripe_webhook_addr: str
    stripe_webhook_secret: str
    meter_interval: timedelta
    log_level: str
    log_format: str
    max_concurrent_streams: int
    metrics_addr: str
    metrics_tenant_labels: int
    traces: str
    webhook_url: str
    webhook_secret: str
    notify_thresholds: tuple[int, ...]
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    # Not a setting: true in the worker processes of ``serve --workers N``.
    reuse_port: bool = False

    @classmethod
    def defaults(cls, **values: Any) -> Settings:
        """The settings of an empty environment, with ``values`` (already parsed) instead."""
        return replace(load_settings({}), **values)

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
