"""Wiring of ``quotaplane billing reconcile``: the ledger, Stripe and the plans for one run."""

from __future__ import annotations

from quotaplane.app.runtime import default_plans_path
from quotaplane.config import Settings
from quotaplane.domain.billing.reconcile import Reconciler, ReconcileRow
from quotaplane.domain.windows import Period
from quotaplane.integrations.plans_file import load_plans
from quotaplane.integrations.stripe.client import StripeGateway
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.reconcile import SqlReconcileQueries


async def reconcile_period(
    settings: Settings, database_url: str, period: Period
) -> list[ReconcileRow]:
    """One reconciliation of ``period``; needs STRIPE_API_KEY and the server's plans file."""
    if not settings.stripe_api_key:
        raise RuntimeError("billing reconcile needs STRIPE_API_KEY (the account to compare with)")
    plans = load_plans(settings.plans_path or default_plans_path())
    # A one-off batch: let the SDK retry what Stripe asks to retry (it has no outbox).
    gateway = StripeGateway(
        settings.stripe_api_key, api_base=settings.stripe_api_base or None, network_retries=3
    )
    engine = create_async_engine_for(database_url)
    try:
        return await Reconciler(SqlReconcileQueries(engine), gateway, plans).run(period)
    finally:
        await engine.dispose()
