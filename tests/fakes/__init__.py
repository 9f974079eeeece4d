"""Fakes: real servers written for the tests (never mocks). The Stripe emulator lives here."""

from tests.fakes.stripe_emulator import RequestRecord, StripeEmulator, event_payload, sign_webhook

__all__ = ["RequestRecord", "StripeEmulator", "event_payload", "sign_webhook"]
