"""`quotaplane db upgrade|current|downgrade` against SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quotaplane.cli.main import main
from quotaplane.storage.sql import migrate

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(
    request: pytest.FixtureRequest, sqlite_url: str, fresh_postgres_database: Callable[[], str]
) -> str:
    return sqlite_url if request.param == "sqlite" else fresh_postgres_database()


def test_upgrade_current_downgrade_round_trip(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    head = migrate.head()
    assert main(["db", "--database-url", empty_database, "upgrade"]) == 0
    assert f"schema revision: {head}" in capsys.readouterr().out
    assert main(["db", "--database-url", empty_database, "current"]) == 0
    assert f"schema revision: {head}" in capsys.readouterr().out
    assert main(["db", "--database-url", empty_database, "downgrade", "base"]) == 0
    assert "schema revision: none" in capsys.readouterr().out
    assert migrate.current(empty_database) is None
