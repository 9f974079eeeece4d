"""The operator CLI against a running `quotaplane serve`: tables, --json, exit codes, CSV import."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quotaplane.storage.sql import migrate
from tests.harness.net import free_port
from tests.harness.quotaplane_server import ServeProcess, start_serve

pytestmark = pytest.mark.timeout(120)
BIN = Path(sys.executable).parent
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_key_prefix: str
) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("cli")
    database = f"sqlite:///{workdir / 'ledger.db'}"
    migrate.upgrade(database)
    served = start_serve(workdir, redis_url=redis_url, database_url=database,
                         key_prefix=f"{redis_key_prefix}-cli")  # fmt: skip
    with served.process:
        yield served


@pytest.fixture
def cli(server: ServeProcess) -> Cli:
    def run(
        *args: str, token: str | None = None, target: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        connection = [
            "--target",
            target or server.addr,
            "--admin-token",
            token or server.admin_token,
        ]
        argv = [str(BIN / "quotaplane"), *args, *connection]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    return run


def _tenant(cli: Cli, name: str = "Acme", plan: str = "growth") -> dict[str, str]:
    done = cli("tenants", "create", "--name", name, "--plan", plan, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_create_get_and_list_tenants_as_tables_and_json(cli: Cli) -> None:
    tenant = _tenant(cli, "Table Co")
    shown = cli("tenants", "get", tenant["id"])
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "PLAN", "STATUS"]
    assert row.startswith(tenant["id"]) and "growth" in row and "ACTIVE" in row
    listed = cli("tenants", "list", "--json")
    assert tenant["id"] in {t["id"] for t in json.loads(listed.stdout)["tenants"]}


def test_keys_secret_is_printed_once_and_revoke_shows_the_date(cli: Cli) -> None:
    tenant = _tenant(cli)
    created = cli("keys", "create", tenant["id"], "--name", "ci")
    assert created.returncode == 0, created.stderr
    assert "secret (shown once" in created.stdout and "qp_live_" in created.stdout
    key_id = created.stdout.splitlines()[1].split()[0]
    listed = cli("keys", "list", tenant["id"])
    assert "qp_live_" in listed.stdout and created.stdout.split()[-1] not in listed.stdout
    revoked = cli("keys", "revoke", key_id, "--json")
    assert json.loads(revoked.stdout)["revoked_at"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("tenants", "get", "not-a-uuid"), 2, "INVALID_ARGUMENT"),
        (("tenants", "get", "6f1c7a1e-0000-4000-8000-000000000001"), 4, "NOT_FOUND"),
        (("tenants", "create", "--name", "x", "--plan", "no-such-plan"), None, "no-such-plan"),
    ],
)
def test_errors_are_one_line_with_a_meaningful_exit_code(
    cli: Cli, args: tuple[str, ...], code: int | None, message: str
) -> None:
    done = cli(*args)
    assert done.returncode != 0 if code is None else done.returncode == code
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_wrong_token_exits_6_and_an_unreachable_server_exits_3(cli: Cli) -> None:
    assert cli("tenants", "list", token="wrong").returncode == 6
    down = cli("tenants", "list", target=f"127.0.0.1:{free_port()}")
    assert down.returncode == 3
    assert "UNAVAILABLE" in down.stderr


def test_csv_import_reports_progress_skips_existing_and_lists_failures(
    cli: Cli, tmp_path: Path
) -> None:
    csv_file = tmp_path / "tenants.csv"
    csv_file.write_text(
        "name,plan,external_id\nOne,starter,crm-1\nTwo,growth,crm-2\nBad,platinum,crm-3\n"
    )
    first = cli("tenants", "import", str(csv_file))
    assert first.returncode == 1
    assert "imported 2/3, skipped 0 (already there), 1 failed" in first.stderr
    assert f"{csv_file}:4:" in first.stderr
    again = cli("tenants", "import", str(csv_file))
    # the two that exist are skipped, counted apart from the imported, and not duplicated
    assert "imported 0/3, skipped 2 (already there), 1 failed" in again.stderr
    listed = json.loads(cli("tenants", "list", "--json", "--page-size", "1000").stdout)["tenants"]
    assert sorted(
        t["external_id"] for t in listed if t.get("external_id", "").startswith("crm-")
    ) == [
        "crm-1",
        "crm-2",
    ]


def test_usage_works_on_its_documented_defaults(cli: Cli) -> None:
    tenant = _tenant(cli, "Usage Co")
    done = cli("usage", tenant["id"])
    assert done.returncode == 0, done.stderr
    assert "total 0 requests" in done.stdout
    as_json = cli("usage", tenant["id"], "--bucket", "day", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["tenant_id"] == tenant["id"]


def test_usage_with_explicit_times_and_a_bad_one(cli: Cli) -> None:
    tenant = _tenant(cli, "Usage Range Co")
    done = cli("usage", tenant["id"], "--start", "2026-11-01", "--end", "2026-11-02T00:00:00Z")
    assert done.returncode == 0, done.stderr
    bad = cli("usage", tenant["id"], "--start", "yesterday")
    assert bad.returncode == 2 and "--start" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
