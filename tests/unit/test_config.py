"""Settings: defaults, parsing from the environment, flags over variables, one-line errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from quotaplane.config import SETTINGS, ConfigError, Settings, load_settings


def test_defaults_match_the_declared_table() -> None:
    assert load_settings({}) == Settings.defaults()


def test_every_declared_setting_is_a_field_with_the_declared_default() -> None:
    defaults = Settings.defaults()
    for s in SETTINGS:
        assert getattr(defaults, s.name) == s.parse(s.default), s.env


def test_environment_values_are_parsed() -> None:
    settings = load_settings(
        {
            "QUOTAPLANE_GRPC_ADDR": "0.0.0.0:6000",
            "QUOTAPLANE_REDIS_URL": "redis://cache:6379/2",
            "QUOTAPLANE_DATABASE_URL": "postgresql://qp@db:5432/ledger",
            "QUOTAPLANE_REDIS_TIMEOUT": "250ms",
            "QUOTAPLANE_CACHE_TTL": "2s",
            "QUOTAPLANE_DATA_DIR": "/var/lib/qp",
        }
    )
    assert settings.grpc_addr == "0.0.0.0:6000"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.database_url == "postgresql://qp@db:5432/ledger"
    assert settings.redis_timeout == timedelta(milliseconds=250)
    assert settings.cache_ttl == timedelta(seconds=2)
    assert settings.data_dir == Path("/var/lib/qp")


def test_flags_override_the_environment() -> None:
    settings = load_settings(
        {"QUOTAPLANE_GRPC_ADDR": "0.0.0.0:6000"}, {"grpc_addr": "127.0.0.1:7000"}
    )
    assert settings.grpc_addr == "127.0.0.1:7000"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("QUOTAPLANE_GRPC_ADDR", "no-port"),
        ("QUOTAPLANE_GRPC_ADDR", "host:99999"),
        ("QUOTAPLANE_REDIS_URL", "http://cache:6379"),
        ("QUOTAPLANE_DATABASE_URL", "mysql://db/ledger"),
        ("QUOTAPLANE_REDIS_TIMEOUT", "fast"),
        ("QUOTAPLANE_CACHE_TTL", "0s"),
        ("QUOTAPLANE_LOG_LEVEL", "chatty"),
        ("QUOTAPLANE_MAX_CONCURRENT_STREAMS", "-3"),
        ("QUOTAPLANE_REDIS_KEY_PREFIX", "has space"),
    ],
)
def test_a_malformed_value_is_one_line_naming_the_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({env: value})
    message = str(caught.value)
    assert message.startswith(f"{env}=")
    assert "\n" not in message


def test_secrets_are_not_echoed_in_errors_or_logs() -> None:
    settings = load_settings(
        {"QUOTAPLANE_ADMIN_TOKEN": "s3cret", "QUOTAPLANE_SERVICE_TOKEN": "svc-secret"}
    )
    shown = settings.redacted()
    assert shown["admin_token"] == "***"
    assert shown["service_token"] == "***"
    assert "s3cret" not in repr(shown.values())


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings.defaults().grpc_addr = "x"  # type: ignore[misc]
