"""SQL invoice ledger: invoices, their lines, plan history for billing and the Stripe outbox.

A period's invoices that are not void are numbered by ``supplement``: 0 for the primary
invoice, 1, 2, ... for the supplementary invoices of late usage (``late_usage.py``). The
partial UNIQUE index ``uq_invoices_tenant_id_period_supplement_open`` keeps one of each, and
``uq_invoices_tenant_id_period_draft`` at most one draft. ``generate`` runs in one
transaction: it locks the period's invoices (``FOR UPDATE`` on Postgres; SQLite serializes
writers), regenerates the draft in place (lines replaced) or inserts the next invoice. Two
concurrent inserts of the same number collide on the index; the loser retries once and then
finds the winner's row, so both calls return one id. A finalized or paid invoice is never
changed.

Amounts are Decimal (``Money`` columns) plus integer minor units; line details (tiers,
proration, span) are JSON with decimals written as strings, never floats.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quotaplane.domain.billing.ports import (
    HourlyUsage,
    PlanChange,
    Pricer,
    StoredInvoice,
    Supplementer,
)
from quotaplane.domain.billing.pricing import PricedInvoice, PricedLine, TierLine
from quotaplane.domain.billing.statuses import CLOSED, InvoiceStatus
from quotaplane.domain.money import round_money
from quotaplane.domain.plans.overrides import PlanOverride
from quotaplane.domain.windows import Period
from quotaplane.storage.sql.access import SqlStore, dialect_insert, utc_now
from quotaplane.storage.sql.tables import (
    invoice_lines,
    invoices,
    plan_changes,
    stripe_outbox,
    tenants,
    usage_hourly,
)

PUSH = "push"


class SqlInvoiceLedger(SqlStore):
    """InvoiceLedger on Postgres or SQLite."""

    _what = "invoice ledger"

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def open_invoice(self, tenant_id: str, period: Period) -> StoredInvoice | None:
        async with self._connection() as conn:
            row = await _open_row(conn, tenant_id, str(period), lock=False)
            return None if row is None else await load_invoice(conn, row)

    async def save_invoice(
        self, tenant_id: str, priced: PricedInvoice, *, finalize_at: datetime | None
    ) -> StoredInvoice:
        try:
            return await self._save(tenant_id, priced, finalize_at)
        except IntegrityError:
            # A concurrent call inserted the period's invoice first: regenerate that one.
            return await self._save(tenant_id, priced, finalize_at)

    async def generate(
        self,
        tenant_id: str,
        period: Period,
        price: Pricer,
        *,
        finalize_at: datetime | None,
        supplement: Supplementer | None = None,
    ) -> StoredInvoice:
        try:
            return await self._generate(tenant_id, period, price, finalize_at, supplement)
        except IntegrityError:
            # A concurrent call inserted the period's invoice first: regenerate that one.
            return await self._generate(tenant_id, period, price, finalize_at, supplement)

    async def period_invoices(self, tenant_id: str, period: Period) -> list[StoredInvoice]:
        async with self._connection() as conn:
            rows = await period_rows(conn, tenant_id, str(period), lock=False)
            return [await load_invoice(conn, row) for row in rows]

    async def enqueue_push(self, invoice_id: str) -> None:
        now = self._clock()
        async with self._transaction() as conn:
            statement = (
                dialect_insert(conn, stripe_outbox)
                .values(
                    id=str(uuid.uuid4()),
                    invoice_id=invoice_id,
                    action=PUSH,
                    idempotency_base=f"qp-invoice-{invoice_id}",
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["invoice_id", "action"])
            )
            await conn.execute(statement)

    async def _save(
        self, tenant_id: str, priced: PricedInvoice, finalize_at: datetime | None
    ) -> StoredInvoice:
        async with self._transaction() as conn:
            row = await _open_row(conn, tenant_id, str(priced.period), lock=True)
            if row is not None and row["status"] in CLOSED:
                return await load_invoice(conn, row)
            return await _store(conn, tenant_id, priced, row, finalize_at, self._clock())

    async def _generate(
        self,
        tenant_id: str,
        period: Period,
        price: Pricer,
        finalize_at: datetime | None,
        supplement: Supplementer | None,
    ) -> StoredInvoice:
        async with self._transaction() as conn:
            if finalize_at is not None:
                await _hold_tenant(conn, tenant_id)
            rows = await period_rows(conn, tenant_id, str(period), lock=True)
            draft = next((row for row in rows if row["status"] == InvoiceStatus.DRAFT), None)
            frozen = [row for row in rows if row["status"] in CLOSED]
            if frozen and supplement is None:
                return await load_invoice(conn, frozen[-1])
            usage = await _usage(conn, tenant_id, period)
            priced = price(usage, await _plan_changes(conn, tenant_id))
            if frozen:
                assert supplement is not None
                billed = [await load_invoice(conn, row) for row in frozen]
                late = supplement(priced, billed)
                if late is None:
                    return await load_invoice(conn, draft) if draft else billed[-1]
                priced = late
            return await _store(conn, tenant_id, priced, draft, finalize_at, self._clock(), rows)


async def _store(
    conn: AsyncConnection,
    tenant_id: str,
    priced: PricedInvoice,
    row: Mapping[Any, Any] | None,
    finalize_at: datetime | None,
    now: datetime,
    period_rows: Sequence[Mapping[Any, Any]] = (),
) -> StoredInvoice:
    """Regenerate the open draft ``row`` in place, or insert the period's next invoice: the
    primary one, or, after ``period_rows`` (its invoices that are not void), a supplement."""
    period = str(priced.period)
    values = _totals(priced, now, finalize_at)
    if row is not None:
        invoice_id = row["id"]
        await conn.execute(invoices.update().where(invoices.c.id == invoice_id).values(values))
        await conn.execute(invoice_lines.delete().where(invoice_lines.c.invoice_id == invoice_id))
    else:
        if period_rows:
            values["supplement"] = max(r["supplement"] for r in period_rows) + 1
            values["supplements_invoice_id"] = period_rows[0]["id"]
        invoice_id = await _insert_invoice(conn, tenant_id, period, values, now)
    await _insert_lines(conn, invoice_id, priced)
    saved = (await conn.execute(sa.select(invoices).where(invoices.c.id == invoice_id))).mappings()
    return await load_invoice(conn, saved.one())


async def _hold_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    # FOR UPDATE on the tenant row conflicts with the KEY SHARE lock every insert of the
    # tenant's usage takes for its foreign key: until this transaction ends, no usage of the
    # tenant can commit, and RecordUsage (which takes KEY SHARE first, then checks for a final
    # invoice) sees the period closed once it proceeds. SQLite serializes writers anyway.
    query = sa.select(tenants.c.id).where(tenants.c.id == tenant_id).with_for_update()
    await conn.execute(query)


async def _usage(conn: AsyncConnection, tenant_id: str, period: Period) -> list[HourlyUsage]:
    query = sa.select(usage_hourly).where(
        usage_hourly.c.tenant_id == tenant_id,
        usage_hourly.c.hour_start >= period.start,
        usage_hourly.c.hour_start < period.end,
    )
    rows = (await conn.execute(query)).mappings()
    return [
        HourlyUsage(row["metric"], row["hour_start"], row["quantity"], row["overage"])
        for row in rows
    ]


async def _plan_changes(conn: AsyncConnection, tenant_id: str) -> list[PlanChange]:
    query = (
        sa.select(plan_changes.c.plan, plan_changes.c.effective_at, plan_changes.c.overrides)
        .where(plan_changes.c.tenant_id == tenant_id)
        .order_by(plan_changes.c.effective_at, plan_changes.c.id)
    )
    return [
        PlanChange(row.plan, row.effective_at, PlanOverride.of(row.overrides))
        for row in await conn.execute(query)
    ]


async def _open_row(
    conn: AsyncConnection, tenant_id: str, period: str, *, lock: bool
) -> Mapping[Any, Any] | None:
    """The period's primary invoice that is not void (supplements are ``_period_rows``)."""
    rows = await period_rows(conn, tenant_id, period, lock=lock)
    return rows[0] if rows else None


async def period_rows(
    conn: AsyncConnection, tenant_id: str, period: str, *, lock: bool
) -> list[Mapping[Any, Any]]:
    """The period's invoices that are not void, primary first."""
    query = (
        sa.select(invoices)
        .where(
            invoices.c.tenant_id == tenant_id,
            invoices.c.period == period,
            invoices.c.status != InvoiceStatus.VOID,
        )
        .order_by(invoices.c.supplement)
    )
    if lock:
        query = query.with_for_update()
    return list((await conn.execute(query)).mappings().all())


async def _insert_invoice(
    conn: AsyncConnection, tenant_id: str, period: str, values: dict[str, Any], now: datetime
) -> str:
    """Version 1, or one more than the period's newest invoice; linked to that one when it is
    void (this invoice replaces it)."""
    last = (
        (
            await conn.execute(
                sa.select(invoices.c.id, invoices.c.version, invoices.c.status)
                .where(invoices.c.tenant_id == tenant_id, invoices.c.period == period)
                .order_by(invoices.c.version.desc())
                .limit(1)
            )
        )
        .mappings()
        .first()
    )
    invoice_id = str(uuid.uuid4())
    await conn.execute(
        invoices.insert().values(
            id=invoice_id,
            tenant_id=tenant_id,
            period=period,
            version=1 if last is None else last["version"] + 1,
            replaces_invoice_id=(
                last["id"] if last is not None and last["status"] == InvoiceStatus.VOID else None
            ),
            created_at=now,
            **values,
        )
    )
    return invoice_id


def _totals(priced: PricedInvoice, now: datetime, finalize_at: datetime | None) -> dict[str, Any]:
    return {
        "status": InvoiceStatus.DRAFT if finalize_at is None else InvoiceStatus.FINALIZED,
        "currency": priced.currency,
        "subtotal": priced.subtotal,
        "total": priced.total,
        "total_minor": priced.total_minor,
        "plan_version": priced.plan_version or None,
        "updated_at": now,
        "finalized_at": finalize_at,
    }


async def _insert_lines(conn: AsyncConnection, invoice_id: str, priced: PricedInvoice) -> None:
    rows = [
        {
            "id": str(uuid.uuid4()),
            "invoice_id": invoice_id,
            "position": position,
            "metric": line.metric,
            "description": line.description,
            "quantity": line.quantity,
            "unit_price": line.unit_price,
            "amount": line.amount,
            "amount_minor": line.amount_minor,
            "details": _details(line),
        }
        for position, line in enumerate(priced.lines)
    ]
    if rows:
        await conn.execute(invoice_lines.insert(), rows)


def _details(line: PricedLine) -> dict[str, Any]:
    return {
        "plan": line.plan,
        **({"override": line.override} if line.override else {}),
        "included": line.included,
        "fraction": str(line.fraction),
        "span_start": None if line.span_start is None else line.span_start.isoformat(),
        "span_end": None if line.span_end is None else line.span_end.isoformat(),
        "tiers": [
            {
                "first_unit": tier.first_unit,
                "last_unit": tier.last_unit,
                "quantity": tier.quantity,
                "unit_price": str(tier.unit_price),
                "flat_fee": str(tier.flat_fee),
                "amount": str(tier.amount),
            }
            for tier in line.tiers
        ],
    }


async def load_invoice(conn: AsyncConnection, row: Mapping[Any, Any]) -> StoredInvoice:
    query = (
        sa.select(invoice_lines)
        .where(invoice_lines.c.invoice_id == row["id"])
        .order_by(invoice_lines.c.position)
    )
    currency = row["currency"]
    lines = tuple(_line(line, currency) for line in (await conn.execute(query)).mappings())
    return StoredInvoice(
        id=row["id"],
        tenant_id=row["tenant_id"],
        period=row["period"],
        version=row["version"],
        status=row["status"],
        currency=currency,
        lines=lines,
        subtotal=round_money(row["subtotal"], currency),
        total=round_money(row["total"], currency),
        total_minor=row["total_minor"],
        created_at=row["created_at"],
        replaces_invoice_id=row["replaces_invoice_id"],
        supplements_invoice_id=row["supplements_invoice_id"],
        supplement=row["supplement"],
        stripe_invoice_id=row["stripe_invoice_id"],
        finalized_at=row["finalized_at"],
        last_error=row["last_error"],
        plan_version=row["plan_version"] or 0,
    )


def _line(row: Mapping[Any, Any], currency: str) -> PricedLine:
    details = row["details"] or {}
    unit_price = row["unit_price"]
    return PricedLine(
        metric=row["metric"],
        plan=details.get("plan", ""),
        description=row["description"],
        quantity=row["quantity"],
        included=details.get("included", 0),
        unit_price=None if unit_price is None else _trimmed(unit_price),
        tiers=tuple(_tier(tier) for tier in details.get("tiers", [])),
        amount=round_money(row["amount"], currency),
        amount_minor=row["amount_minor"],
        fraction=Decimal(details.get("fraction", "1")),
        span_start=_time(details.get("span_start")),
        span_end=_time(details.get("span_end")),
        override=details.get("override", ""),
    )


def _tier(tier: Mapping[Any, Any]) -> TierLine:
    return TierLine(
        first_unit=tier["first_unit"],
        last_unit=tier["last_unit"],
        quantity=tier["quantity"],
        unit_price=Decimal(tier["unit_price"]),
        flat_fee=Decimal(tier["flat_fee"]),
        amount=Decimal(tier["amount"]),
    )


def _trimmed(value: Decimal) -> Decimal:
    """0.040000 -> 0.04 (the column pads to 6 places), but 40.000000 -> 40, not 4E+1."""
    trimmed = value.normalize()
    return trimmed if trimmed.as_tuple().exponent <= 0 else trimmed.quantize(Decimal(1))  # type: ignore[operator]


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
