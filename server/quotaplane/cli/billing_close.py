"""``quotaplane billing close YYYY-MM [--dry-run]``: close a billing period by hand.

The same run the replicas' period close does (``services/period_close.py``), on the ledger
directly, under the same lease (see ``app/billing_close.py`` for why not through an RPC). A
finished period is run again: every tenant is looked at and only late usage changes anything.
``--dry-run`` reads the ledger and says what a run would do, writing nothing.

Exit codes: 0 done, 1 invalid input or a tenant that could not be closed (retry after fixing
it), 2 configuration, 3 another replica holds the run (try again later) or a dependency failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any

from quotaplane.config import load_settings
from quotaplane.domain.errors import QuotaplaneError
from quotaplane.domain.windows import Period
from quotaplane.services.period_close import CloseReport, TenantResult

EXIT_OK, EXIT_INVALID, EXIT_FAILED = 0, 1, 3


def register(billing_commands: Any) -> None:
    close = billing_commands.add_parser(
        "close",
        help="close a period by hand: generate, finalize and queue every tenant's invoice",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    close.add_argument("period", metavar="YYYY-MM", help="the billing period, e.g. 2026-11")
    close.add_argument(
        "--dry-run", action="store_true", help="print what a run would do; change nothing"
    )
    close.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quotaplane.app.billing_close import close_period

    try:
        period = Period.parse(args.period)
    except QuotaplaneError as error:
        print(f"quotaplane billing close: {error}", file=sys.stderr)
        return EXIT_INVALID
    if not args.dry_run and datetime.now(UTC) < period.end:
        print(
            f"quotaplane billing close: period {period} is still open until "
            f"{period.end.isoformat()}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    settings = load_settings(os.environ)
    try:
        report = asyncio.run(
            close_period(settings, period, dry_run=args.dry_run, report=_print_tenant)
        )
    except QuotaplaneError as error:
        print(f"quotaplane billing close: {error}", file=sys.stderr)
        return EXIT_FAILED
    return _summary(report)


def _print_tenant(tenant: TenantResult) -> None:
    print(f"{tenant.tenant_id}  {tenant.name:<24.24}  {tenant.outcome:<12}  {tenant.detail}")


def _summary(report: CloseReport) -> int:
    closed = sum(1 for t in report.tenants if t.outcome == "closed")
    if report.status == "dry_run":
        would = sum(1 for t in report.tenants if t.outcome == "would close")
        print(f"{report.period}: dry run, {len(report.tenants)} tenant(s), {would} to close")
        return EXIT_OK
    if report.status == "held":
        print(f"{report.period}: another replica is running this close; try again later")
        return EXIT_FAILED
    print(
        f"{report.period}: run {report.run} {report.status}, {len(report.tenants)} tenant(s), "
        f"{closed} closed, {report.invoices_closed} invoice(s) finalized"
    )
    if report.status == "incomplete":
        return EXIT_INVALID
    return EXIT_OK if report.status == "done" else EXIT_FAILED
