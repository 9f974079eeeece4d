"""Keyset paging for admin listings: page sizes and opaque page tokens.

A listing is ordered by ``(created_at, id)``, optionally after a leading text key (``sort``:
invoices list by period first); a page token is the base64url of the last row's
``(sort, created_at, id)`` plus the listing's name and the filters it ran with. Keyset paging
(not offsets) means a row inserted or changed while an operator pages never shifts, duplicates
or hides another row. Tokens carry the listing and its filters so that a token reused with
another listing (a ListInvoices token given to ListTenants) or other filters is refused instead
of silently continuing a different listing. Tokens are not secret and not signed: forging one can
only skip rows of a listing the caller may read anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from quotaplane.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_CHARS = 1024
_TOKEN_VERSION = 2  # 2: tokens name their listing


def parse_page_size(value: int) -> int:
    """``value`` as a page size: 0 means the default, 1..1000 as given, anything else refused."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}, got {value}")
    return value


@dataclass(frozen=True)
class Cursor:
    """The last row of a page: the next page starts strictly after it."""

    created_at: datetime
    id: str
    filters: dict[str, str] = field(default_factory=dict)
    sort: str = ""  # a leading sort key, for listings that order by something before time
    listing: str = ""  # which listing issued the token, e.g. "tenants"

    def encode(self) -> str:
        body = {
            "v": _TOKEN_VERSION,
            "c": self.created_at.astimezone(UTC).isoformat(),
            "i": self.id,
            "f": self.filters,
            "s": self.sort,
            "l": self.listing,
        }
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, filters: dict[str, str], *, listing: str) -> Cursor | None:
    """The cursor of ``token`` (None for an empty one); InvalidArgument if it is not ours.

    ``listing`` names the listing asking and ``filters`` are its request's filters; a token
    issued by another listing or for other filters is refused.
    """
    if not token:
        return None
    cursor = _decode(token)
    if cursor.listing != listing:
        raise InvalidArgument(
            f"page_token was issued by another listing, not by the {listing} listing; "
            "start without a token"
        )
    if cursor.filters != filters:
        raise InvalidArgument(
            "page_token was issued for a listing with other filters; "
            "repeat the filters of the first request or start without a token"
        )
    return cursor


def _decode(token: str) -> Cursor:
    bad = InvalidArgument("page_token is not a token returned by this listing")
    if len(token) > _MAX_TOKEN_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        created_at = datetime.fromisoformat(body["c"])
        row_id, filters, sort, listing = body["i"], body["f"], body.get("s", ""), body["l"]
        version = body["v"]
    except (binascii.Error, ValueError, TypeError, KeyError, AttributeError):
        raise bad from None
    if (
        version != _TOKEN_VERSION
        or created_at.tzinfo is None
        or not isinstance(row_id, str)
        or not isinstance(sort, str)
        or not isinstance(listing, str)
        or not isinstance(filters, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in filters.items())
    ):
        raise bad
    return Cursor(created_at.astimezone(UTC), row_id, filters, sort, listing)
