"""Caller-supplied text: what the ledger can store of it.

Every string field of a request is checked here before it reaches storage: Postgres refuses a
NUL character in text (a caller's mistake must never surface as a database outage), and no
field may be longer than ``MAX_TEXT`` (each has its own, tighter limit where it matters).
"""

from __future__ import annotations

# The longest string any request field may carry (each field has its own, tighter limit).
MAX_TEXT = 4096


def text_problem(value: str, field_name: str, max_chars: int = MAX_TEXT) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL, which Postgres refuses, or too long)."""
    if "\x00" in value:
        return f"{field_name} must not contain NUL characters"
    if len(value) > max_chars:
        return f"{field_name} must be at most {max_chars:,} characters, got {len(value):,}"
    return None
