"""``quotaplane billing reconcile YYYY-MM`` as operators run it (the installed command, in its
own process) on a real ledger (SQLite and Postgres) and the Stripe emulator: every row
matches after the invoice push and the meter reporter ran (exit 0); a difference injected into
Stripe through the real SDK is reported (exit 1), and so is usage never sent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from quotaplane.domain.billing.pricing import price_period
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.integrations.stripe.client import StripeGateway
from quotaplane.services.invoice_push import InvoicePusher
from quotaplane.storage.sql.invoices import SqlInvoiceLedger
from quotaplane.storage.sql.outbox import SqlPushOutbox
from tests.fakes import StripeEmulator
from tests.integration.test_meter_reporter import (
    Clock,
    book,
    create_meters,
    reporter,
    stripe_client,
    tenant,
    this_hour,
)

pytestmark = pytest.mark.timeout(90)

PLANS_TEXT = """
plans:
  metered:
    metrics:
      requests: {stripe_meter: openclaw_requests, limits: {month: 1000000}}
      rating.bulk: {stripe_meter: openclaw_bulk}
  priced:
    base_fee: "49.00"
    metrics:
      requests: {charge: {model: per_unit, unit_price: "0.001"}}
"""
QUOTAPLANE = str(Path(sys.executable).with_name("quotaplane"))


def reconcile(
    url: str, emu: StripeEmulator, plans: Path, period: Period, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "QUOTAPLANE_PLANS": str(plans),
        "STRIPE_API_KEY": emu.api_key,
        "QUOTAPLANE_STRIPE_API_BASE": emu.api_base,
    }
    command = [QUOTAPLANE, "billing", "reconcile", str(period), "--database-url", url, *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


async def pushed_invoice(engine: AsyncEngine, emu: StripeEmulator, period: Period) -> str:
    """A tenant on the quotaplane-priced plan whose finalized invoice was pushed to Stripe."""
    tenant_id = await tenant(engine, "Priced", plan="priced")
    catalog = parse_plans(PLANS_TEXT, "test")
    priced = price_period(period, catalog.get("priced"), {"requests": 1234})
    ledger = SqlInvoiceLedger(engine)
    invoice = await ledger.save_invoice(tenant_id, priced, finalize_at=datetime.now(UTC))
    await ledger.enqueue_push(invoice.id)
    gateway = StripeGateway(emu.api_key, api_base=emu.api_base)
    assert await InvoicePusher(SqlPushOutbox(engine), gateway).run_once() >= 1
    return tenant_id


async def test_reconcile_matches_then_reports_what_was_injected_into_stripe(
    database: AsyncEngine, ledger_url: str, emulator: StripeEmulator, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS_TEXT)
    period, clock = Period.of(datetime.now(UTC)), Clock()
    meters = create_meters(emulator)
    metered = await tenant(database, "Metered")
    await book(database, metered, "requests", 40, this_hour())
    await book(database, metered, "rating.bulk", 2, this_hour())
    await reporter(emulator, database, clock).tick()
    await pushed_invoice(database, emulator, period)

    clean = await asyncio.to_thread(reconcile, ledger_url, emulator, plans, period)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "ledger and Stripe match" in clean.stdout
    assert "DIFFERENCE" not in clean.stdout
    assert clean.stdout.count("match") >= 3  # two meters and one invoice

    client = stripe_client(emulator)
    customer = str(client.v1.customers.list(params={"limit": 100}).data[-1].id)
    event: Any = {
        "event_name": "openclaw_requests",
        "payload": {"stripe_customer_id": customer, "value": "3"},
    }
    client.v1.billing.meter_events.create(params=event)
    textfile = tmp_path / "reconcile.prom"
    found = await asyncio.to_thread(
        reconcile, ledger_url, emulator, plans, period, "--metrics-textfile", str(textfile)
    )
    assert found.returncode == 1, found.stdout + found.stderr
    (line,) = [row for row in found.stdout.splitlines() if "DIFFERENCE" in row]
    assert "requests (meter openclaw_requests)" in line and " 40 " in line and " 43 " in line
    assert meters  # (the meters exist in Stripe: the difference is the injected event)
    gauges = {
        (s.labels["period"], s.labels["kind"]): s.value
        for family in text_string_to_metric_families(textfile.read_text())
        for s in family.samples
        if s.name == "quotaplane_billing_reconcile_difference"
    }
    assert gauges == {(str(period), "meter"): 1.0, (str(period), "invoice"): 0.0}


async def test_an_invoice_stripe_has_and_the_ledger_does_not_is_a_difference(
    database: AsyncEngine, ledger_url: str, emulator: StripeEmulator, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS_TEXT)
    period = Period.of(datetime.now(UTC))
    await pushed_invoice(database, emulator, period)
    client = stripe_client(emulator)
    (remote,) = client.v1.invoices.list(params={"limit": 100}).data[:1]
    extra: Any = {
        "customer": remote.customer,
        "currency": "usd",
        "metadata": {"period": str(period)},
    }
    client.v1.invoices.create(params=extra)
    found = await asyncio.to_thread(reconcile, ledger_url, emulator, plans, period)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "not in ledger" in found.stdout


async def test_usage_never_sent_to_stripe_is_a_difference(
    database: AsyncEngine, ledger_url: str, emulator: StripeEmulator, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS_TEXT)
    create_meters(emulator)
    metered = await tenant(database, "Unsent")
    await book(database, metered, "requests", 5, this_hour())
    period = Period.of(datetime.now(UTC))
    found = await asyncio.to_thread(reconcile, ledger_url, emulator, plans, period)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "no Stripe customer" in found.stdout


async def test_stripe_unreachable_is_exit_3_with_one_line(
    database: AsyncEngine, ledger_url: str, emulator: StripeEmulator, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS_TEXT)
    create_meters(emulator)
    metered = await tenant(database, "Reported")
    await book(database, metered, "requests", 5, this_hour())
    await reporter(emulator, database, Clock()).tick()  # a Stripe customer to ask about
    emulator.fail_next(20, 500, path_prefix="/v1/billing")
    period = Period.of(datetime.now(UTC))
    result = await asyncio.to_thread(reconcile, ledger_url, emulator, plans, period)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"billing reconcile {period}: Stripe: APIError (500)" in result.stderr


def test_a_bad_period_is_a_usage_error(emulator: StripeEmulator, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    result = reconcile(url, emulator, tmp_path / "plans.yaml", "2026-13")  # type: ignore[arg-type]
    assert result.returncode == 2, result.stdout + result.stderr
