"""Operator subcommands of ``quotaplane``: tenants, keys, plans, usage, invoices over AdminService.

They talk to a running server through the typed client (``--target``, default
``$QUOTAPLANE_TARGET`` or 127.0.0.1:50051) with the admin token (``--admin-token``,
``$QUOTAPLANE_ADMIN_TOKEN``, else ``<data dir>/admin-token`` of a local ``serve``).
Output is a readable table, or JSON with ``--json``. Exit codes follow the gRPC status:
0 ok, 1 some rows of a bulk import failed, 2 invalid argument, 3 server unavailable,
4 not found, 5 already exists / failed precondition, 6 not authenticated / not allowed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from quotaplane.cli.output import (
    BUCKET,
    FAILED,
    IMPORTED,
    INVOICE,
    KEY,
    PLAN,
    SKIPPED,
    TENANT,
    Progress,
    emit,
    emit_page,
    print_table,
)
from quotaplane.config import ConfigError, load_settings
from quotaplane_client import QuotaplaneClient, RetryPolicy
from quotaplane_client.v1 import admin_pb2, types_pb2

EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.UNAVAILABLE: 3,
    grpc.StatusCode.DEADLINE_EXCEEDED: 3,
    grpc.StatusCode.NOT_FOUND: 4,
    grpc.StatusCode.ALREADY_EXISTS: 5,
    grpc.StatusCode.FAILED_PRECONDITION: 5,
    grpc.StatusCode.UNAUTHENTICATED: 6,
    grpc.StatusCode.PERMISSION_DENIED: 6,
}


def admin_token(args: argparse.Namespace) -> str:
    if args.admin_token:
        return str(args.admin_token)
    path = load_settings(os.environ).data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    raise ConfigError("no admin token: pass --admin-token or set QUOTAPLANE_ADMIN_TOKEN")


def client(args: argparse.Namespace) -> QuotaplaneClient:
    return QuotaplaneClient(
        args.target,
        admin_token=admin_token(args),
        timeout=args.timeout,
        retry=RetryPolicy(attempts=3),
    )


def _times(**texts: str | None) -> dict[str, Any]:
    """Timestamp fields for the ISO times given; an omitted one stays unset (an empty
    Timestamp would count as set, to 1970-01-01, and override the server's default)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    stamps = {}
    for name, text in texts.items():
        if text:
            try:
                at = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError(f"--{name} {text!r} is not an ISO time like 2026-11-01") from None
            stamps[name] = Timestamp()
            stamps[name].FromDatetime(at if at.tzinfo else at.replace(tzinfo=UTC))
    return stamps


# --- commands --------------------------------------------------------------------------------


def tenants_create(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.CreateTenantRequest(
        name=args.name, plan=args.plan, external_id=args.external_id or ""
    )
    tenant = c.admin_call("CreateTenant", req)
    emit(args, tenant, [tenant], TENANT)
    return 0


def tenants_get(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    tenant = c.admin_call("GetTenant", admin_pb2.GetTenantRequest(tenant_id=args.tenant_id))
    emit(args, tenant, [tenant], TENANT)
    return 0


def tenants_list(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    status = (
        types_pb2.Tenant.Status.Value(args.status.upper())
        if args.status
        else types_pb2.Tenant.STATUS_UNSPECIFIED
    )
    req = admin_pb2.ListTenantsRequest(
        page_size=args.page_size,
        page_token=args.page_token or "",
        plan=args.plan or "",
        status=status,
    )
    page = c.admin_call("ListTenants", req)
    emit_page(args, page, page.tenants, TENANT)
    return 0


def tenants_set_plan(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.UpdateTenantPlanRequest(tenant_id=args.tenant_id, plan=args.plan)
    tenant = c.admin_call("UpdateTenantPlan", req)
    emit(args, tenant, [tenant], TENANT)
    return 0


def tenants_suspend(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.SuspendTenantRequest(tenant_id=args.tenant_id, reason=args.reason or "")
    tenant = c.admin_call("SuspendTenant", req)
    emit(args, tenant, [tenant], TENANT)
    return 0


def tenants_resume(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    tenant = c.admin_call("ResumeTenant", admin_pb2.ResumeTenantRequest(tenant_id=args.tenant_id))
    emit(args, tenant, [tenant], TENANT)
    return 0


def tenants_import(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    """CSV with a header: name,plan[,external_id]. Rows whose external_id exists are skipped."""
    with open(args.file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"name", "plan"} - set(rows[0] if rows else {})
    if missing:
        raise ConfigError(f"{args.file}: missing CSV column(s) {', '.join(sorted(missing))}")
    progress, problems = Progress(len(rows)), []
    for line, row in enumerate(rows, start=2):
        req = admin_pb2.CreateTenantRequest(
            name=row["name"], plan=row["plan"], external_id=row.get("external_id") or ""
        )
        try:
            c.admin_call("CreateTenant", req)
            progress.step(IMPORTED)
        except grpc.RpcError as err:
            exists = err.code() == grpc.StatusCode.ALREADY_EXISTS
            progress.step(SKIPPED if exists else FAILED)
            if not exists:
                problems.append(f"{args.file}:{line}: {err.details()}")
    progress.finish()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def keys_create(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.CreateApiKeyRequest(tenant_id=args.tenant_id, name=args.name)
    created = c.admin_call("CreateApiKey", req)
    if args.json:
        emit(args, created, [], KEY)
    else:
        print_table([created.key], KEY)
        print(f"\nsecret (shown once, store it now): {created.secret}")
    return 0


def keys_list(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.ListApiKeysRequest(tenant_id=args.tenant_id, include_revoked=args.all)
    listed = c.admin_call("ListApiKeys", req)
    emit(args, listed, listed.keys, KEY)
    return 0


def keys_revoke(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    key = c.admin_call("RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id=args.key_id))
    emit(args, key, [key], KEY)
    return 0


def plans_list(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    listed = c.admin_call("ListPlans", admin_pb2.ListPlansRequest())
    _plans(args, listed)
    return 0


def plans_reload(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    listed = c.admin_call("ReloadPlans", admin_pb2.ReloadPlansRequest(), retry=False)
    _plans(args, listed)
    return 0


def _plans(args: argparse.Namespace, listed: admin_pb2.ListPlansResponse) -> None:
    emit(args, listed, listed.plans, PLAN)
    if not args.json:
        print(f"plans version {listed.version} (from {listed.source})")


def usage_show(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    bucket = admin_pb2.UsageBucket.Value(f"USAGE_BUCKET_{args.bucket.upper()}")
    req = admin_pb2.GetUsageRequest(
        tenant_id=args.tenant_id,
        metric=args.metric or "",
        bucket=bucket,
        **_times(start=args.start, end=args.end),
    )
    usage = c.admin_call("GetUsage", req)
    emit(args, usage, usage.buckets, BUCKET)
    if not args.json:
        pending = f"{usage.unflushed:,} not yet in the ledger"
        if usage.not_yet_billed:  # late usage of a finalized period (a supplementary invoice)
            pending += f", {usage.not_yet_billed:,} late, not yet billed"
        print(f"total {usage.total:,} {usage.metric} ({pending})")
        for shadow in usage.shadow_denials:
            print(f"shadow limit {shadow.limit}: would have refused {shadow.count:,}")
    return 0


def invoices_list(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.ListInvoicesRequest(
        tenant_id=args.tenant_id or "",
        period=args.period or "",
        page_size=args.page_size,
        page_token=args.page_token or "",
    )
    page = c.admin_call("ListInvoices", req)
    emit_page(args, page, page.invoices, INVOICE)
    if not args.json:
        for late in page.late_usage:  # GenerateInvoice bills it on a supplementary invoice
            print(
                f"late usage not yet billed: tenant {late.tenant_id} {late.period} "
                f"{late.quantity:,} {late.metric}"
            )
    return 0


def invoices_get(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    invoice = c.admin_call("GetInvoice", admin_pb2.GetInvoiceRequest(invoice_id=args.invoice_id))
    emit(args, invoice, [invoice], INVOICE)
    return 0


def invoices_void(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.VoidInvoiceRequest(invoice_id=args.invoice_id, reason=args.reason or "")
    invoice = c.admin_call("VoidInvoice", req, retry=False)
    emit(args, invoice, [invoice], INVOICE)
    return 0


def invoices_generate(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    invoice = c.generate_invoice(
        args.tenant_id,
        args.period,
        finalize=args.finalize,
        force=args.force,
        push_to_stripe=args.push,
    )
    emit(args, invoice, [invoice], INVOICE)
    return 0


# --- parser ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run an admin subcommand; a gRPC error becomes one line on stderr and its exit code."""
    with client(args) as c:
        try:
            return int(args.admin_func(args, c))
        except grpc.RpcError as err:
            code = err.code()
            print(f"quotaplane: {code.name}: {err.details()}", file=sys.stderr)
            return EXIT_BY_CODE.get(code, 3)


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=os.environ.get("QUOTAPLANE_TARGET", "127.0.0.1:50051"),
        help="server address (env QUOTAPLANE_TARGET)",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("QUOTAPLANE_ADMIN_TOKEN"),
        help="env QUOTAPLANE_ADMIN_TOKEN, else <data dir>/admin-token",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _command(
    group: Any, name: str, func: Callable[..., int], help_text: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text)
    _connection_flags(parser)
    parser.set_defaults(func=run, admin_func=func)
    return parser


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=int, default=0, help="1..1000 (default 100)")
    parser.add_argument("--page-token", help="next_page_token of the previous page")


def register(commands: Any, plans_commands: Any) -> Any:
    """Add tenants, keys, usage, invoices and plans list/reload to the ``quotaplane`` parser;
    returns the tenants subcommands (``control.py`` adds ``override``)."""
    tenants = commands.add_parser("tenants", help="create, list and change tenants")
    t = tenants.add_subparsers(dest="tenants_command", required=True, metavar="COMMAND")
    p = _command(t, "create", tenants_create, "create a tenant")
    p.add_argument("--name", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--external-id")
    _command(t, "get", tenants_get, "show a tenant").add_argument("tenant_id")
    p = _command(t, "list", tenants_list, "list tenants (oldest first)")
    p.add_argument("--plan")
    p.add_argument("--status", choices=["active", "suspended"])
    _paging(p)
    p = _command(t, "set-plan", tenants_set_plan, "move a tenant to another plan")
    p.add_argument("tenant_id")
    p.add_argument("plan")
    p = _command(t, "suspend", tenants_suspend, "deny all of a tenant's requests")
    p.add_argument("tenant_id")
    p.add_argument("--reason")
    _command(t, "resume", tenants_resume, "lift a suspension").add_argument("tenant_id")
    p = _command(t, "import", tenants_import, "create tenants from a CSV (name,plan[,external_id])")
    p.add_argument("file", type=Path)

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    k = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    p = _command(k, "create", keys_create, "create a key (the secret is printed once)")
    p.add_argument("tenant_id")
    p.add_argument("--name", required=True)
    p = _command(k, "list", keys_list, "list a tenant's keys")
    p.add_argument("tenant_id")
    p.add_argument("--all", action="store_true", help="include revoked keys")
    _command(k, "revoke", keys_revoke, "revoke a key").add_argument("key_id")

    _command(plans_commands, "list", plans_list, "plans in force on the server")
    _command(
        plans_commands, "reload", plans_reload, "apply the server's plans file as a new version"
    )

    p = _command(commands, "usage", usage_show, "a tenant's usage in hour/day/month buckets")
    p.add_argument("tenant_id")
    p.add_argument("--metric")
    p.add_argument("--start", help="ISO time (default: start of this month)")
    p.add_argument("--end", help="ISO time (default: now)")
    p.add_argument("--bucket", choices=["hour", "day", "month"], default="day")

    invoices = commands.add_parser("invoices", help="generate, list, show and void invoices")
    i = invoices.add_subparsers(dest="invoices_command", required=True, metavar="COMMAND")
    p = _command(i, "generate", invoices_generate, "build (or return) a tenant's invoice")
    p.add_argument("tenant_id")
    p.add_argument("period", help="YYYY-MM")
    p.add_argument("--finalize", action="store_true")
    p.add_argument("--force", action="store_true", help="finalize before the period ends")
    p.add_argument("--push", action="store_true", help="push the finalized invoice to Stripe")
    p = _command(i, "list", invoices_list, "list invoices")
    p.add_argument("--tenant-id")
    p.add_argument("--period")
    _paging(p)
    _command(i, "get", invoices_get, "show an invoice").add_argument("invoice_id")
    p = _command(i, "void", invoices_void, "void an unpaid invoice")
    p.add_argument("invoice_id")
    p.add_argument("--reason")
    return t
