"""The ``quotaplane`` command: serve, validate plans, migrate the ledger.

Exit codes: 0 success, 1 the thing checked is invalid (e.g. a plans file), 2 bad usage or
configuration (the message names the variable or flag), 3 a dependency failed at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from quotaplane.cli import admin as cli_admin
from quotaplane.cli import billing_close as cli_billing_close
from quotaplane.cli import billing_reconcile as cli_billing_reconcile
from quotaplane.cli import control as cli_control
from quotaplane.cli import health as cli_health
from quotaplane.config import ConfigError, Settings, load_settings
from quotaplane.config_table import SETTINGS
from quotaplane.domain.errors import PlanFileError

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
DESCRIPTION = "quotaplane: the quota-and-billing control plane for metered APIs."
EPILOG = """\
commands by what they need:
  on this machine:   serve, db, settings, plans validate
  on the ledger (QUOTAPLANE_DATABASE_URL; a real close also QUOTAPLANE_REDIS_URL):
                     billing close
  ledger and Stripe: billing reconcile
  admin commands (a running server, --target HOST:PORT, and the admin token from
  --admin-token, QUOTAPLANE_ADMIN_TOKEN or <data dir>/admin-token):
                     tenants, keys, usage, invoices, audit,
                     plans list, plans reload, plans apply, plans history, plans rollback
  probes:            health

'quotaplane COMMAND --help' shows a command's options; exit codes: 0 ok, 1 invalid input
(e.g. a plans file), 2 bad usage or configuration, 3 a dependency failed.
"""


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("quotaplane")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "unknown (not installed)"


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (flags override QUOTAPLANE_* variables)")
    for s in SETTINGS:
        group.add_argument(
            "--" + s.name.replace("_", "-"),
            dest=f"setting_{s.name}",
            metavar="VALUE",
            help=f"{s.help} [env {s.env}, default {s.default!r}]",
        )


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    return {
        s.name: value
        for s in SETTINGS
        if (value := getattr(args, f"setting_{s.name}", None)) is not None
    }


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(os.environ, _overrides(args))


def _raw_settings(args: argparse.Namespace) -> dict[str, str]:
    """Every setting's variable and its text as given (flag, else variable, else default)."""
    overrides = _overrides(args)
    return {s.env: overrides.get(s.name, os.environ.get(s.env, s.default)) for s in SETTINGS}


def _cmd_serve(args: argparse.Namespace) -> int:
    from quotaplane.app.listen_check import require_bindable

    settings = _settings(args)
    if args.worker_index is None:
        # Before the heavy imports and any start-up work: a taken port is one line, at once.
        # (Not in a worker of --workers N: its siblings hold the shared ports.)
        require_bindable(settings.grpc_addr, "QUOTAPLANE_GRPC_ADDR / --grpc-addr")
        if settings.authz_http_addr != "off":
            require_bindable(
                settings.authz_http_addr, "QUOTAPLANE_AUTHZ_HTTP_ADDR / --authz-http-addr"
            )
    from quotaplane.app.serve import serve
    from quotaplane.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if args.worker_index is None and settings.workers > 1:
        from quotaplane.app.workers import supervise

        return supervise(settings, _raw_settings(args))
    if args.worker_index is not None:  # one of the workers: the ports are shared
        settings = dataclasses.replace(settings, reuse_port=True)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        asyncio.run(serve(settings))
    return EXIT_OK


def _cmd_plans_validate(args: argparse.Namespace) -> int:
    from quotaplane.domain.plans.summary import summarize
    from quotaplane.integrations.plans_file import load_plans

    worst = EXIT_OK
    for path in args.files:
        try:
            catalog = load_plans(Path(path))
        except PlanFileError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            print(f"{path}: INVALID ({len(exc.problems)} problem(s))", file=sys.stderr)
            worst = EXIT_INVALID
            continue
        print(f"{path}: OK, {len(catalog.plans)} plan(s)")
        for line in summarize(catalog):
            print(f"  {line}")
    return worst


def _database_url(args: argparse.Namespace) -> str | None:
    """The ledger to migrate; None when it is the embedded SQLite file and that does not exist
    while the command only reads or lowers the schema (creating it would leave an empty
    ledger in whatever directory the command ran from)."""
    if args.database_url:
        return str(args.database_url)
    settings = load_settings(os.environ)
    if settings.database_url:
        return settings.database_url
    from quotaplane.app.datadir import ensure_data_dir
    from quotaplane.app.embedded import embedded_database_url, existing_ledger_url

    if args.db_command == "upgrade":  # the one command that may create the embedded ledger
        ensure_data_dir(settings.data_dir)
        return embedded_database_url(settings.data_dir)
    try:
        return existing_ledger_url(settings)
    except ConfigError as error:
        print(f"{error}, or pass --database-url", file=sys.stderr)
        return None


def _cmd_db(args: argparse.Namespace) -> int:
    from quotaplane.storage.sql import migrate

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = _database_url(args)
    if url is None:
        return EXIT_INVALID
    if args.db_command == "upgrade":
        _retrying(lambda: migrate.upgrade(url, args.revision), args.wait)
    elif args.db_command == "downgrade":
        migrate.downgrade(url, args.revision)
    print(f"schema revision: {migrate.current(url) or 'none'} (head {migrate.head()})")
    return EXIT_OK


def _retrying(step: Callable[[], None], wait: float) -> None:
    """Run ``step``; while the database refuses connections, retry for up to ``wait`` seconds
    (a Postgres container's first start restarts it once after initdb)."""
    from sqlalchemy.exc import OperationalError

    deadline = time.monotonic() + wait
    while True:
        try:
            step()
            return
        except OperationalError as error:
            if time.monotonic() >= deadline:
                raise OSError(f"database not reachable after {wait:g} s: {error.orig}") from None
            print(f"database not reachable yet, retrying: {error.orig}", file=sys.stderr)
            time.sleep(1.0)


def settings_markdown() -> str:
    """The README's settings table, generated from the declarations."""
    rows = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        flag = "--" + s.name.replace("_", "-")
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.env}` | `{flag}` | {default} | {s.help} |")
    return "\n".join(rows)


def _cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_markdown())
        return EXIT_OK
    width = max(len(s.env) for s in SETTINGS)
    for s in SETTINGS:
        print(f"{s.env:<{width}}  default {s.default!r:<20} {s.help}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quotaplane",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"quotaplane {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the gRPC server (embedded valkey + SQLite by default)"
    )
    _add_setting_flags(serve)
    # Set by the --workers supervisor for the processes it starts; not for operators.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

    plans = commands.add_parser("plans", help="work with plans files")
    plans_commands = plans.add_subparsers(dest="plans_command", required=True, metavar="COMMAND")
    validate = plans_commands.add_parser(
        "validate", help="check plans files without starting anything"
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=_cmd_plans_validate)

    tenants_commands = cli_admin.register(commands, plans_commands)
    cli_control.register(commands, tenants_commands, plans_commands)

    db = commands.add_parser("db", help="ledger schema migrations (Alembic)")
    db.add_argument(
        "--database-url", help="default: QUOTAPLANE_DATABASE_URL, else the embedded SQLite file"
    )
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="migrate to a revision (default head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="retry while the database refuses connections, up to SECONDS (default 0)",
    )
    downgrade = db_commands.add_parser("downgrade", help="migrate down to a revision (e.g. base)")
    downgrade.add_argument("revision")
    db_commands.add_parser("current", help="print the schema revision")
    db.set_defaults(func=_cmd_db)

    cli_health.register(commands)

    billing = commands.add_parser("billing", help="billing runs on the ledger and Stripe")
    billing_commands = billing.add_subparsers(
        dest="billing_command", required=True, metavar="COMMAND"
    )
    cli_billing_close.register(billing_commands)
    cli_billing_reconcile.register(billing_commands)

    settings = commands.add_parser("settings", help="list every setting, its variable and default")
    settings.add_argument("--markdown", action="store_true", help="print the README's table")
    settings.set_defaults(func=_cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"quotaplane: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # the one place a start-up failure becomes a readable line
        from quotaplane.app.datadir import DataDirInUse

        if isinstance(exc, DataDirInUse | PlanFileError | OSError | RuntimeError):
            print(f"quotaplane: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
