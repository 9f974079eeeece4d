"""Output of the operator subcommands: aligned tables, JSON, and a progress line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

Columns = Sequence[tuple[str, Callable[[Any], object]]]


def when(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def enum_name(message: Message, field: str) -> str:
    enum_type = message.DESCRIPTOR.fields_by_name[field].enum_type
    assert enum_type is not None, f"{field} is not an enum field"
    return str(enum_type.values_by_number[getattr(message, field)].name)


TENANT: Columns = [
    ("id", lambda t: t.id),
    ("name", lambda t: t.name),
    ("plan", lambda t: t.plan),
    ("status", lambda t: enum_name(t, "status")),
    ("external_id", lambda t: t.external_id or "-"),
    ("created", lambda t: when(t.created_at)),
]
KEY: Columns = [
    ("id", lambda k: k.id),
    ("name", lambda k: k.name),
    ("prefix", lambda k: k.prefix),
    ("created", lambda k: when(k.created_at)),
    ("revoked", lambda k: when(k.revoked_at)),
]
PLAN: Columns = [
    ("name", lambda p: p.name),
    ("currency", lambda p: p.currency),
    ("base_fee", lambda p: p.base_fee or "0"),
    ("metrics", lambda p: "; ".join(f"{m.metric}: {m.price}" for m in p.metrics)),
]
INVOICE: Columns = [
    ("id", lambda i: i.id),
    ("tenant", lambda i: i.tenant_id),
    ("period", lambda i: i.period),
    ("status", lambda i: enum_name(i, "status")),
    ("total", lambda i: f"{i.total} {i.currency}"),
    ("stripe", lambda i: i.stripe_invoice_id or "-"),
]
BUCKET: Columns = [
    ("start", lambda b: when(b.start)),
    ("end", lambda b: when(b.end)),
    ("quantity", lambda b: f"{b.quantity:,}"),
]


def print_table(rows: Iterable[Any], columns: Columns, out: TextIO = sys.stdout) -> None:
    header = [name.upper() for name, _ in columns]
    cells = [[str(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *cells, strict=True)]
    for line in (header, *cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)


def emit(args: argparse.Namespace, message: Message, rows: Sequence[Any], columns: Columns) -> None:
    if args.json:
        print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))
    else:
        print_table(rows, columns)


def emit_page(
    args: argparse.Namespace, page: Message, rows: Sequence[Any], columns: Columns
) -> None:
    """A list page, and in text mode the flag that fetches the next one (on stderr, so the table
    on stdout stays parseable)."""
    emit(args, page, rows, columns)
    token = getattr(page, "next_page_token", "")
    if token and not args.json:
        print(f"next page: --page-token {token}", file=sys.stderr)


IMPORTED, SKIPPED, FAILED = "imported", "skipped", "failed"


class Progress:
    """One status line on stderr: redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self.total, self.done, self.out = total, 0, out
        self.counts = dict.fromkeys((IMPORTED, SKIPPED, FAILED), 0)
        self._tty = out.isatty()
        self._next_report = 0

    def step(self, outcome: str) -> None:
        """Count one row: IMPORTED (created), SKIPPED (already there) or FAILED."""
        self.done += 1
        self.counts[outcome] += 1
        line = (
            f"imported {self.counts[IMPORTED]}/{self.total}, "
            f"skipped {self.counts[SKIPPED]} (already there), {self.counts[FAILED]} failed"
        )
        if self._tty:
            print(f"\r{line}", end="", file=self.out, flush=True)
        elif self.done * 10 >= self._next_report * self.total or self.done == self.total:
            print(line, file=self.out, flush=True)
            self._next_report = self.done * 10 // max(self.total, 1) + 1

    def finish(self) -> None:
        if self._tty:
            print(file=self.out)
