"""The billing parts of a replica, built from its stores: the period close, the Stripe invoice
push and meter reporter loops, the incoming Stripe webhooks. Pure factories, like wiring.py;
each part is absent (no loop, None) when its settings leave it off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from quotaplane.app.loop import Loop
from quotaplane.app.stores import Stores
from quotaplane.config import Settings
from quotaplane.domain.billing.invoicing import InvoiceService
from quotaplane.domain.billing.payments import PaymentWebhooks
from quotaplane.domain.billing.ports import StoredInvoice
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.registry import PlanRegistry
from quotaplane.domain.quota.engine import utc_now
from quotaplane.domain.quota.ports import TenantLookup
from quotaplane.integrations.stripe.client import StripeGateway, webhook_verifier
from quotaplane.services.invoice_push import InvoicePusher
from quotaplane.services.meter_reporter import MeterReporter
from quotaplane.services.period_close import (
    DEFAULT_INTERVAL,
    DEFAULT_LEASE,
    CloseObserver,
    PeriodCloser,
)
from quotaplane.services.usage_flusher import UsageFlusher
from quotaplane.telemetry import Telemetry


@dataclass(frozen=True)
class CloseOptions:
    """How the period close runs; tests pass a clock they control and a slowing hook."""

    clock: Callable[[], datetime] = utc_now
    on_tenant: Callable[[str], Awaitable[None]] | None = None
    interval: timedelta = DEFAULT_INTERVAL
    lease: timedelta = DEFAULT_LEASE


DEFAULT_CLOSE = CloseOptions()


def period_closer(
    settings: Settings,
    stored: Stores,
    tenants: TenantLookup,
    plans: Callable[[], PlanCatalog],
    flusher: UsageFlusher,
    *,
    telemetry: Telemetry | None = None,
    options: CloseOptions = CloseOptions(),
) -> PeriodCloser:
    """The period close of ``services/period_close.py`` over this replica's stores."""
    invoices = InvoiceService(
        tenants=tenants,
        plans=plans,
        invoices=stored.invoices,
        flush=flusher.flush_tenant,
        clock=options.clock,
        on_finalized=record_finalized(telemetry) if telemetry else None,
    )
    observer = CloseObserver(
        invoice_closed=telemetry.record_close_invoice if telemetry else None,
        run_finished=(
            (lambda period, seconds: telemetry.record_close_run(period.end.timestamp(), seconds))
            if telemetry
            else None
        ),
    )
    return PeriodCloser(
        stored.close,
        invoices,
        stored.invoices,
        stored.usage,
        plans,
        grace=settings.billing_grace or timedelta(0),
        push_to_stripe=bool(settings.stripe_api_key),
        clock=options.clock,
        interval=options.interval,
        lease=options.lease,
        observer=observer,
        on_tenant=options.on_tenant,
    )


def period_close_loops(
    settings: Settings,
    stored: Stores,
    tenants: TenantLookup,
    plans: Callable[[], PlanCatalog],
    flusher: UsageFlusher,
    telemetry: Telemetry,
    options: CloseOptions,
) -> Sequence[Loop]:
    """The period close loop, unless QUOTAPLANE_BILLING_GRACE=off."""
    if settings.billing_grace is None:
        return ()
    closer = period_closer(
        settings, stored, tenants, plans, flusher, telemetry=telemetry, options=options
    )
    return (Loop("period close", closer.run),)


def stripe_push_loops(settings: Settings, stored: Stores, telemetry: Telemetry) -> Sequence[Loop]:
    """The Stripe outbox worker, when STRIPE_API_KEY is set: pushes finalized invoices."""
    if not settings.stripe_api_key:
        return ()
    gateway = StripeGateway(settings.stripe_api_key, api_base=settings.stripe_api_base or None)
    pusher = InvoicePusher(stored.outbox, gateway, on_outcome=telemetry.record_stripe_push)
    return (Loop("stripe outbox", pusher.run),)


def meter_reporter_loops(
    settings: Settings, stored: Stores, plans: PlanRegistry, telemetry: Telemetry
) -> Sequence[Loop]:
    """Usage of metrics priced in Stripe, as meter events, when STRIPE_API_KEY is set."""
    if not settings.stripe_api_key:
        return ()
    gateway = StripeGateway(settings.stripe_api_key, api_base=settings.stripe_api_base or None)
    reporter = MeterReporter(
        stored.meters,
        gateway,
        plans,
        interval=settings.meter_interval,
        on_outcome=telemetry.record_meter_event,
    )
    return (Loop("stripe meter reporter", reporter.run),)


def payment_webhooks(settings: Settings, stored: Stores) -> PaymentWebhooks | None:
    """Incoming Stripe events, when QUOTAPLANE_STRIPE_WEBHOOK_ADDR is set."""
    if settings.stripe_webhook_addr == "off":
        return None
    if not settings.stripe_webhook_secret:
        raise RuntimeError("QUOTAPLANE_STRIPE_WEBHOOK_ADDR is set: STRIPE_WEBHOOK_SECRET must be")
    verifier = webhook_verifier(settings.stripe_webhook_secret)
    return PaymentWebhooks(stored.outbox, verifier)


def record_finalized(telemetry: Telemetry) -> Callable[[StoredInvoice], None]:
    def record(invoice: StoredInvoice) -> None:
        if invoice.total_minor >= 0:  # a supplementary invoice may be a credit (late_usage.py)
            telemetry.record_invoice_total(invoice.currency, invoice.total_minor)

    return record
