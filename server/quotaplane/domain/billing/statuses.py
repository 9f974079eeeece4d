"""An invoice's status: draft -> finalized -> paid, or void. One definition for every layer.

A draft can be regenerated until its period closes. A *closed* invoice (finalized or paid)
never changes, and its period takes no more usage on it: RecordUsage refuses events of such a
period. Void is the end of an invoice that was issued by mistake.
"""

from __future__ import annotations

import enum


class InvoiceStatus(enum.StrEnum):
    DRAFT = "draft"
    FINALIZED = "finalized"
    PAID = "paid"
    VOID = "void"

    @property
    def closed(self) -> bool:
        return self in CLOSED


CLOSED = frozenset({InvoiceStatus.FINALIZED, InvoiceStatus.PAID})
