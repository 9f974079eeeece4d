"""Building blocks of the local Stripe emulator; the entry point is tests.fakes.stripe_emulator.

(This package is only ever imported as `tests.fakes.stripe`; nothing puts tests/fakes on
sys.path, so it cannot shadow the real `stripe` SDK.)
"""
