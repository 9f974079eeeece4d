"""``quotaplane billing reconcile YYYY-MM``: the ledger against Stripe for one period.

Runs on a machine that reaches the ledger (``--database-url``, else QUOTAPLANE_DATABASE_URL,
else the embedded SQLite file of QUOTAPLANE_DATA_DIR) and Stripe (STRIPE_API_KEY,
QUOTAPLANE_STRIPE_API_BASE), with the server's plans (QUOTAPLANE_PLANS). Prints one row per
invoice meant for Stripe and per metric priced by a Stripe meter, tenant by tenant; exit 0 when
everything matches, 1 on any difference, 2 bad usage, 3 the ledger or Stripe unreachable.

``--metrics-textfile PATH`` also writes the gauge ``quotaplane_billing_reconcile_difference``
(tenants with a difference, by period and kind) in Prometheus' text format, for
node_exporter's textfile collector: reconciliation is a batch job run after a period closes
(cron, a Kubernetes CronJob), so it is not a loop in every replica, and a batch job's metrics
reach Prometheus through a file (or a Pushgateway) rather than a scrape of the job itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from decimal import Decimal

from quotaplane.cli.output import print_table
from quotaplane.config import load_settings
from quotaplane.domain.billing.payment_ports import PaymentError
from quotaplane.domain.billing.reconcile import ReconcileRow, differences_by_kind
from quotaplane.domain.errors import QuotaplaneError
from quotaplane.domain.windows import Period

EXIT_OK, EXIT_DIFFERENCE, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3

COLUMNS = [
    ("tenant", lambda r: r.tenant_name),
    ("tenant_id", lambda r: r.tenant_id),
    ("kind", lambda r: r.kind.value),
    ("item", lambda r: r.item),
    ("ledger", lambda r: _amount(r.ledger)),
    ("stripe", lambda r: _amount(r.stripe)),
    ("result", lambda r: "match" if r.matches else "DIFFERENCE"),
    ("note", lambda r: r.note or "-"),
]


def register(billing_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = billing_commands.add_parser(
        "reconcile",
        help="compare the ledger with Stripe for a period (exit 1 on any difference)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reconcile.add_argument("period", metavar="YYYY-MM", help="the billing period (UTC month)")
    reconcile.add_argument(
        "--database-url", help="default: QUOTAPLANE_DATABASE_URL, else the embedded SQLite file"
    )
    reconcile.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="also write quotaplane_billing_reconcile_difference to PATH (Prometheus text)",
    )
    reconcile.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quotaplane.app.embedded import existing_ledger_url
    from quotaplane.app.reconcile import reconcile_period
    from quotaplane.telemetry import write_reconcile_textfile

    try:
        period = Period.parse(args.period)
    except QuotaplaneError as error:
        print(f"quotaplane: {error.message}", file=sys.stderr)
        return EXIT_USAGE
    settings = load_settings(os.environ)
    url = args.database_url or existing_ledger_url(settings)
    try:
        rows = asyncio.run(reconcile_period(settings, url, period))
    except (QuotaplaneError, PaymentError) as error:
        print(f"quotaplane: billing reconcile {period}: {error.message}", file=sys.stderr)
        return EXIT_FAILED
    differences = differences_by_kind(rows)
    if args.metrics_textfile:
        write_reconcile_textfile(args.metrics_textfile, str(period), differences)
    return _report(rows, period, differences)


def _report(rows: list[ReconcileRow], period: Period, differences: dict[str, int]) -> int:
    if rows:
        print_table(rows, COLUMNS)
    different = sum(differences.values())
    if different:
        print(f"{period}: {different} difference(s) ({_by_kind(differences)})")
        return EXIT_DIFFERENCE
    print(f"{period}: {len(rows)} row(s), ledger and Stripe match")
    return EXIT_OK


def _by_kind(differences: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {n} tenant(s)" for kind, n in differences.items() if n)


def _amount(value: Decimal | None) -> str:
    return "-" if value is None else str(value)
