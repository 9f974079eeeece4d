"""How a setting's text becomes a value: one parser per kind of setting.

Each raises ValueError with a short reason; ``config.load_settings`` adds the variable's name.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.quota.routes import RouteTable

MAX_WORKERS = 64


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


def parse_grace(text: str) -> timedelta | None:
    """The billing grace time: a duration (0 allowed), or ``off`` (no automatic period close)."""
    if text.strip().lower() == "off":
        return None
    return parse_duration(text)


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


def parse_routes(text: str) -> RouteTable:
    try:
        return RouteTable.parse(text)
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from None


def parse_workers(text: str) -> int:
    """A count, or 'auto': the CPUs this process may run on."""
    if text.strip().lower() == "auto":
        return min(MAX_WORKERS, len(os.sched_getaffinity(0)))
    workers = parse_positive_int(text)
    if workers > MAX_WORKERS:
        raise ValueError(f"expected 1..{MAX_WORKERS} worker processes")
    return workers


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", ""):
        raise ValueError("expected true or false")
    return value in ("true", "1", "yes")


def parse_text(value: str) -> str:
    return value


def parse_path(value: str) -> Path:
    return Path(value).expanduser()


def parse_optional_path(value: str) -> Path | None:
    return Path(value).expanduser() if value else None
