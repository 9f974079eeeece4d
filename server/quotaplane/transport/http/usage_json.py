"""``GET /v1/usage`` as JSON: a ``TenantUsage`` (domain/billing/self_service.py) encoded once.

Money is a Decimal string (``"0.52"``) with its integer minor units beside it (``52``), as
the Invoice message does; instants are RFC 3339 UTC; counts are JSON integers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from quotaplane.domain.billing.admin import UsageTotal
from quotaplane.domain.billing.ports import StoredInvoice
from quotaplane.domain.billing.pricing import PricedLine
from quotaplane.domain.billing.self_service import LimitUsage, TenantUsage
from quotaplane.transport.http.gateway import seconds_until


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _limit(usage: LimitUsage, now: datetime, shadow: dict[str, int]) -> dict[str, Any]:
    state = usage.state
    return {
        "mode": "shadow" if state.shadow else "enforce",
        "name": state.name,
        "metric": state.metric,
        "window": state.window,
        "limit": state.limit,
        "used": usage.used,
        "remaining": state.remaining,
        "reset_at": _instant(state.reset_at),
        "reset_seconds": seconds_until(state.reset_at, now),
        "overage_policy": state.overage_policy,
        "overage": state.overage,
        **({"would_be_denials": shadow.get(state.name, 0)} if state.shadow else {}),
    }


def _day(total: UsageTotal) -> dict[str, Any]:
    return {"date": total.start.date().isoformat(), "quantity": total.quantity}


def _line(line: PricedLine) -> dict[str, Any]:
    return {
        "metric": line.metric,
        "plan": line.plan,
        "description": line.description,
        "quantity": line.quantity,
        "included": line.included,
        "unit_price": None if line.unit_price is None else str(line.unit_price),
        "amount": str(line.amount),
        "amount_minor": line.amount_minor,
    }


def invoice_summary(invoice: StoredInvoice) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "period": invoice.period,
        "status": invoice.status,
        "currency": invoice.currency,
        "total": str(invoice.total),
        "total_minor": invoice.total_minor,
    }


def _charges(invoice: StoredInvoice | None) -> dict[str, Any] | None:
    if invoice is None:
        return None
    return {
        **invoice_summary(invoice),
        "estimate": invoice.status == "draft",
        "subtotal": str(invoice.subtotal),
        "lines": [_line(line) for line in invoice.lines],
    }


def usage_document(usage: TenantUsage) -> dict[str, Any]:
    now = usage.generated_at
    tenant = usage.tenant
    return {
        "tenant": {
            "id": tenant.id,
            "name": tenant.name,
            "plan": tenant.plan,
            "status": tenant.status.value,
        },
        "period": str(usage.period),
        "period_start": _instant(usage.period.start),
        "period_end": _instant(usage.period.end),
        "current": usage.current,
        "generated_at": _instant(now),
        "limits": [_limit(limit, now, usage.shadow_denials) for limit in usage.limits],
        "spend_cap": None if usage.spend_cap is None else str(usage.spend_cap),
        "daily": {metric: [_day(d) for d in days] for metric, days in usage.daily.items()},
        "charges": _charges(usage.charges),
        "invoices": [invoice_summary(invoice) for invoice in usage.invoices],
    }


def encode_usage(usage: TenantUsage) -> bytes:
    return json.dumps(usage_document(usage), separators=(",", ":")).encode()
