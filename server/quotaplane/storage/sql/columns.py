"""The ledger's column types, column helpers and constraint naming convention.

Portable types only. Two column types carry the ledger's rules to both dialects:

- ``UtcDateTime``: timezone-aware in and out. A naive datetime is refused on write (it would
  mean "whatever the server's zone is"); values come back as UTC-aware datetimes on SQLite
  too, where the column itself has no zone.
- ``Money``: ``decimal.Decimal`` in and out, NUMERIC on Postgres. SQLite would store a NUMERIC
  as a binary float, so there the value is kept as its exact decimal text. A value with more
  decimals or digits than the column holds is refused rather than rounded: rounding is the
  pricing code's job (once per invoice line), never the database's. Totals are also kept as
  integer minor units (BigInteger), exact everywhere and the figure Stripe receives.

IDs are canonical lowercase UUID strings (String(36)), as the domain uses them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from quotaplane.domain.billing.statuses import InvoiceStatus
from quotaplane.domain.tenants.model import TenantStatus

NAMING_CONVENTION: dict[str, str] = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}


TENANT_STATUSES = ", ".join(repr(status.value) for status in TenantStatus)
INVOICE_STATUSES = ", ".join(repr(status.value) for status in InvoiceStatus)

# Quantizing must raise, not round or overflow silently, whatever the caller's context.
_MONEY_CONTEXT = Context(prec=40, traps=[InvalidOperation])


class UtcDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE that accepts only aware datetimes and returns UTC-aware ones."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the ledger stores aware times")
        utc = value.astimezone(UTC)
        # SQLite keeps the text without a zone: store UTC so text order is time order.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """NUMERIC(precision, scale) as exact Decimal on every dialect (text on SQLite)."""

    impl = sa.Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(self.precision + 2))  # sign and point
        return dialect.type_descriptor(sa.Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Decimal | int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = self._checked(value)
        return format(exact, "f") if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value)).quantize(self._quantum)

    def _checked(self, value: Decimal | int) -> Decimal:
        # bool is an int, float is not a Decimal: neither is money.
        if isinstance(value, bool) or not isinstance(value, Decimal | int):
            raise TypeError(f"money must be a Decimal, got {type(value).__name__}")
        if not Decimal(value).is_finite():
            raise ValueError(f"money must be a finite number, got {value}")
        try:
            exact = Decimal(value).quantize(self._quantum, context=_MONEY_CONTEXT)
        except InvalidOperation:
            exact = None
        if exact is None or len(exact.as_tuple().digits) > self.precision:
            raise ValueError(f"{value} has more than {self.precision} digits")
        if exact != value:
            raise ValueError(f"{value} does not fit {self.scale} decimal places exactly")
        return exact


def unit_price() -> Money:
    """Prices per unit are finer than a cent (0.00004 USD per request)."""
    return Money(20, 6)


def amount() -> Money:
    """Amounts are rounded to the currency's minor unit; 4 places covers every ISO currency."""
    return Money(20, 4)


def serial() -> TypeEngine[int]:
    # BIGINT on Postgres; SQLite autoincrements only an INTEGER PRIMARY KEY (the rowid).
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def id_column(name: str = "id", **kwargs: Any) -> sa.Column[str]:
    return sa.Column(name, sa.String(36), **kwargs)


def tenant_fk(**kwargs: Any) -> sa.Column[str]:
    return sa.Column(
        "tenant_id", sa.String(36), sa.ForeignKey("tenants.id"), nullable=False, **kwargs
    )


def at(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, UtcDateTime(), nullable=nullable)
