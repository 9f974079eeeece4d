"""Late usage: units of a period that arrive after its invoice is frozen, and how they are billed.

The rules (design terms; the README's billing section says the same):

- The units *billed* for a period are the usage units on the lines of the period's frozen
  (finalized or paid) invoices that are not void: the primary invoice and any supplementary
  ones before. The base fee line is not usage.
- *Late usage* of a period, per metric, is the ledger's units of the period minus the units
  billed. It exists only once the period has a frozen invoice (before that, the draft simply
  carries everything) and it is never negative (the ledger only grows).
- Late usage is billed on a *supplementary* invoice of the same period: its own id, a link to
  the invoice it supplements (the period's first frozen one), and one line per metric with
  late units, priced incrementally under the period's plans: ``price(all units) - price(units
  billed)``, where ``price`` is the period's exact pricing (``pricing.py``, plan segments,
  included units, tiers, one rounding per line). So tiers and included units are exact across
  the invoices, the base fee is charged once, and the period's invoices add up to the cent to
  what one invoice for all its usage would have cost. Several supplementary invoices may
  follow one another; each carries only what the ones before did not.
- A charge model where more units cost less (volume tiers) can make the increment negative:
  the line is then a credit; it is never dropped, or the sum above would not hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal, localcontext

from quotaplane.domain.billing.ports import HourlyUsage, StoredInvoice
from quotaplane.domain.billing.pricing import BASE_FEE, PricedInvoice, PricedLine
from quotaplane.domain.money import MONEY_CONTEXT, round_money, to_minor_units


def billed_units(billed: Iterable[StoredInvoice]) -> dict[str, int]:
    """Usage units per metric on the given invoices' lines (the base fee is not usage)."""
    units: dict[str, int] = {}
    for invoice in billed:
        for line in invoice.lines:
            if line.metric != BASE_FEE:
                units[line.metric] = units.get(line.metric, 0) + line.quantity
    return units


def ledger_units(usage: Iterable[HourlyUsage]) -> dict[str, int]:
    """Units per metric of the ledger's hourly rows."""
    units: dict[str, int] = {}
    for row in usage:
        units[row.metric] = units.get(row.metric, 0) + row.quantity
    return units


def late_units(usage: Mapping[str, int], billed: Sequence[StoredInvoice]) -> dict[str, int]:
    """Units per metric that no frozen invoice carries; empty while nothing is frozen."""
    frozen = [invoice for invoice in billed if invoice.frozen]
    if not frozen:
        return {}
    on_invoices = billed_units(frozen)
    late = {metric: units - on_invoices.get(metric, 0) for metric, units in usage.items()}
    return {metric: units for metric, units in sorted(late.items()) if units > 0}


def supplementary_invoice(
    full: PricedInvoice, billed: Sequence[StoredInvoice]
) -> PricedInvoice | None:
    """The late usage of ``full``'s period priced incrementally; None without late usage.

    ``full`` prices all the period's units as one invoice would; ``billed`` are the period's
    frozen invoices (see the module rules).
    """
    totals = _usage_units(full.lines)
    late = late_units(totals, billed)
    if not late:
        return None
    lines = tuple(_late_line(metric, units, full, billed) for metric, units in late.items())
    with localcontext(MONEY_CONTEXT):
        subtotal = sum((line.amount for line in lines), round_money(Decimal(0), full.currency))
    return PricedInvoice(
        period=full.period,
        currency=full.currency,
        lines=lines,
        subtotal=subtotal,
        total=subtotal,
        total_minor=to_minor_units(subtotal, full.currency),
        plan_version=full.plan_version,
    )


def _usage_units(lines: Iterable[PricedLine]) -> dict[str, int]:
    units: dict[str, int] = {}
    for line in lines:
        if line.metric != BASE_FEE:
            units[line.metric] = units.get(line.metric, 0) + line.quantity
    return units


def _late_line(
    metric: str, units: int, full: PricedInvoice, billed: Sequence[StoredInvoice]
) -> PricedLine:
    all_lines = [line for line in full.lines if line.metric == metric]
    billed_lines = [
        line
        for invoice in billed
        if invoice.frozen
        for line in invoice.lines
        if line.metric == metric
    ]
    with localcontext(MONEY_CONTEXT):
        amount = sum((line.amount for line in all_lines), Decimal(0)) - sum(
            (line.amount for line in billed_lines), Decimal(0)
        )
    included = sum(line.included for line in all_lines) - sum(
        line.included for line in billed_lines
    )
    last = all_lines[-1]
    total = sum(line.quantity for line in all_lines)
    amount = round_money(amount, full.currency)  # already exact to the cent: a no-op
    return replace(
        last,
        description=(
            f"Late usage: {units:,} {metric} ({last.plan}), priced as {total:,} units "
            f"less the {total - units:,} billed before"
        ),
        quantity=units,
        included=max(0, included),
        unit_price=last.unit_price if len(all_lines) == 1 else None,
        tiers=(),
        amount=amount,
        amount_minor=to_minor_units(amount, full.currency),
        fraction=Decimal(1),
        span_start=full.period.start,
        span_end=full.period.end,
    )


def describe(late: Mapping[str, int]) -> str:
    """``"3,000 requests, 12 rating.bulk"`` for logs and messages."""
    return ", ".join(f"{units:,} {metric}" for metric, units in late.items()) or "none"
