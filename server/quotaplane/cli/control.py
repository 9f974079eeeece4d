"""Operator controls in the ``quotaplane`` command: plans versions, tenant overrides, audit.

    quotaplane plans apply FILE          validate FILE and store it as the next plans version
    quotaplane plans history             the stored versions, newest first
    quotaplane plans rollback VERSION    apply an older version again, as a new version
    quotaplane tenants override TENANT --set metrics.requests.limits.month=100000
    quotaplane tenants override TENANT --file deal.yaml | --clear
    quotaplane audit [--method M] [--tenant-id T] [--start ISO] [--end ISO]

Same connection flags, output and exit codes as the other admin subcommands (``admin.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from quotaplane.cli.admin import _command, _paging, _times
from quotaplane.cli.output import TENANT, Columns, emit, emit_page, when
from quotaplane.config import ConfigError
from quotaplane_client import QuotaplaneClient
from quotaplane_client.v1 import admin_pb2

VERSION: Columns = [
    ("version", lambda v: v.version),
    ("applied", lambda v: when(v.applied_at)),
    ("by", lambda v: v.applied_by),
    ("source", lambda v: v.source),
    ("note", lambda v: v.note or "-"),
    ("digest", lambda v: v.digest[:12]),
]
AUDIT: Columns = [
    ("id", lambda e: e.id),
    ("time", lambda e: when(e.time)),
    ("credential", lambda e: e.credential),
    ("method", lambda e: e.method.rpartition("/")[2]),
    ("tenant", lambda e: e.tenant_id or "-"),
    ("result", lambda e: e.result),
    ("request", lambda e: e.request if len(e.request) <= 80 else e.request[:77] + "..."),
]
OVERRIDES: Columns = [*TENANT[:3], ("overrides", lambda t: t.overrides or "-")]


def plans_apply(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    try:
        document = Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{args.file}: cannot read plans file: {error}") from None
    req = admin_pb2.ApplyPlansRequest(document=document, source=args.source or str(args.file))
    return _applied(args, c.admin_call("ApplyPlans", req, retry=False))


def plans_rollback(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.RollbackPlansRequest(version=args.version)
    return _applied(args, c.admin_call("RollbackPlans", req, retry=False))


def _applied(args: argparse.Namespace, reply: admin_pb2.ApplyPlansResponse) -> int:
    emit(args, reply, [reply.version], VERSION)
    if not args.json and not reply.changed:
        print(f"unchanged: version {reply.version.version} already says this")
    return 0


def plans_history(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.ListPlanVersionsRequest(
        page_size=args.page_size, page_token=args.page_token or ""
    )
    page = c.admin_call("ListPlanVersions", req)
    emit_page(args, page, page.versions, VERSION)
    return 0


def set_path(document: dict[str, Any], assignment: str) -> None:
    """``a.b.c=value`` into ``document``; ``null`` removes the key (merge-patch rules)."""
    path, sep, value = assignment.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    node = document
    for key in keys[:-1]:
        child = node.get(key)
        node = node.setdefault(key, {}) if isinstance(child, dict) or child is None else {}
    node[keys[-1]] = None if value.strip() in ("null", "~") else value.strip()


def tenants_override(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    tenant_id = args.tenant_id
    if args.clear:
        req = admin_pb2.ClearTenantOverridesRequest(tenant_id=tenant_id)
        tenant = c.admin_call("ClearTenantOverrides", req, retry=False)
    else:
        tenant = c.admin_call(
            "SetTenantOverrides",
            admin_pb2.SetTenantOverridesRequest(tenant_id=tenant_id, document=_document(args, c)),
            retry=False,
        )
    emit(args, tenant, [tenant], OVERRIDES)
    return 0


def _document(args: argparse.Namespace, c: QuotaplaneClient) -> str:
    """--file as given, or the tenant's overrides with each --set applied."""
    if args.file:
        return Path(args.file).read_text("utf-8")
    if not args.set:
        raise ConfigError("give --set KEY.PATH=VALUE (repeatable), --file FILE or --clear")
    tenant = c.admin_call("GetTenant", admin_pb2.GetTenantRequest(tenant_id=args.tenant_id))
    document: dict[str, Any] = json.loads(tenant.overrides) if tenant.overrides else {}
    for assignment in args.set:
        set_path(document, assignment)
    return json.dumps(document)


def audit_list(args: argparse.Namespace, c: QuotaplaneClient) -> int:
    req = admin_pb2.ListAuditEventsRequest(
        method=args.method or "",
        tenant_id=args.tenant_id or "",
        page_size=args.page_size,
        page_token=args.page_token or "",
        **_times(start=args.start, end=args.end),
    )
    page = c.admin_call("ListAuditEvents", req)
    emit_page(args, page, page.events, AUDIT)
    return 0


def register(commands: Any, tenants: Any, plans: Any) -> None:
    p = _command(plans, "apply", plans_apply, "validate a plans file and store it as a version")
    p.add_argument("file", type=Path)
    p.add_argument("--source", help="recorded with the version (default: the file name)")
    _paging(_command(plans, "history", plans_history, "stored plans versions, newest first"))
    p = _command(plans, "rollback", plans_rollback, "apply an older plans version again")
    p.add_argument("version", type=int)

    p = _command(tenants, "override", tenants_override, "set or clear a tenant's overrides")
    p.add_argument("tenant_id")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="repeatable")
    group.add_argument("--file", help="a partial plan entry (YAML or JSON), replacing all")
    group.add_argument("--clear", action="store_true", help="remove every override")

    p = _command(commands, "audit", audit_list, "the audit trail of admin changes")
    p.add_argument("--method", help="e.g. CreateTenant")
    p.add_argument("--tenant-id")
    p.add_argument("--start", help="ISO time")
    p.add_argument("--end", help="ISO time")
    _paging(p)
