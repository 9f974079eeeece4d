"""Operator database URLs -> SQLAlchemy URLs with the driver chosen inside, and their errors."""

from __future__ import annotations

import pytest

from quotaplane.domain.errors import InvalidArgument
from quotaplane.logs import redact_url
from quotaplane.storage.sql.engine import (
    dialect_of,
    normalize_database_url,
    validate_schema_name,
)

PG = "postgresql+psycopg://"


@pytest.mark.parametrize(
    ("url", "sync", "async_"),
    [
        ("postgresql://user@host:5432/db", PG + "user@host:5432/db", PG + "user@host:5432/db"),
        ("postgres://u:p@h/db", PG + "u:p@h/db", PG + "u:p@h/db"),
        ("postgresql+psycopg://u@h/db", PG + "u@h/db", PG + "u@h/db"),
        ("postgresql+psycopg2://u@h/db", PG + "u@h/db", PG + "u@h/db"),
        ("postgresql+asyncpg://u@h/db", PG + "u@h/db", PG + "u@h/db"),
        ("POSTGRESQL://u@h/db?sslmode=require", PG + "u@h/db?sslmode=require", None),
        ("sqlite:///relative.db", "sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        ("sqlite:////abs/path.db", "sqlite:////abs/path.db", "sqlite+aiosqlite:////abs/path.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+pysqlite:///x.db", "sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("  sqlite:///x.db\n", "sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_operator_urls_get_the_driver_chosen_inside(
    url: str, sync: str, async_: str | None
) -> None:
    assert normalize_database_url(url, async_=False) == sync
    assert normalize_database_url(url, async_=True) == (async_ or sync)


@pytest.mark.parametrize(
    "url",
    ["mysql://root:hunter2@db/x", "redis://:hunter2@h:6379/0", "postgresql+foo://u:hunter2@h/d"],
)
def test_unknown_scheme_is_invalid_argument_naming_the_scheme(url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_database_url(url, async_=True)
    assert repr(url.partition("://")[0]) in caught.value.message
    assert "hunter2" not in caught.value.message


@pytest.mark.parametrize("url", ["", "user:hunter2@host/db", "ledger.db", "://x", "1abc://h"])
def test_url_without_a_scheme_is_invalid_argument_without_echo(url: str) -> None:
    with pytest.raises(InvalidArgument, match="no recognisable scheme") as caught:
        normalize_database_url(url, async_=False)
    assert "hunter2" not in caught.value.message


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("postgres://h/d", "postgresql"),
        ("postgresql+psycopg://h/d", "postgresql"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_dialect_of(url: str, dialect: str) -> None:
    assert dialect_of(url) == dialect


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:hunter2@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:////tmp/ledger.db", "sqlite:////tmp/ledger.db"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://default:s3cret@cache.example:6380", "rediss://default:***@cache.example:6380"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("schema", ["public", "qpt_1a2b", "_x"])
def test_plain_schema_names_are_accepted(schema: str) -> None:
    assert validate_schema_name(schema) == schema


@pytest.mark.parametrize("schema", ["", "Upper", "a-b", "x; DROP TABLE t", "a" * 64, "1abc"])
def test_schema_names_that_need_quoting_are_refused(schema: str) -> None:
    with pytest.raises(InvalidArgument, match="schema"):
        validate_schema_name(schema)
