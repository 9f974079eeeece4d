"""The plain tree a plans file is read into, and the problems found while checking it.

A ``Tree`` holds every scalar as the string the operator wrote (only null becomes None), so
the typed readers of ``Problems`` turn strings into ``int`` or ``Decimal`` themselves and no
number ever passes through a float. Reading a file into a tree is the plans file
integration's job (``integrations/plans_file.py``); the rules that build plans from the tree
live in ``rules.py``, the format itself is documented in ``model.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.money import parse_money

Tree = None | str | list["Tree"] | dict[str, "Tree"]
KeyPath = tuple[str | int, ...]


_INT_RE = re.compile(r"-?[0-9]+(?:_[0-9]+)*")


def format_path(path: KeyPath) -> str:
    """``("plans", "pro", "tiers", 0)`` -> ``plans.pro.tiers[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + part
    return text or "(top level)"


class Problems:
    """Collects every problem of one file as ``source:path: message`` lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, path: KeyPath, message: str) -> None:
        self.lines.append(f"{self.source}:{format_path(path)}: {message}")

    def add_at(self, location: str, message: str) -> None:
        self.lines.append(f"{self.source}:{location}: {message}")

    def mapping(
        self,
        value: Tree,
        path: KeyPath,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, Tree] | None:
        """``value`` if it is a mapping; reports unknown and missing keys (but returns it)."""
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping, got {describe(value)}")
            return None
        allowed_keys = sorted(allowed)
        for key in value:
            if key not in allowed_keys:
                self.add((*path, key), f"unknown key; allowed: {', '.join(allowed_keys)}")
        for key in required:
            if key not in value:
                self.add((*path, key), "is required")
        return value

    def integer(self, value: Tree, path: KeyPath, *, minimum: int = 0) -> int | None:
        """A whole number written plainly (``1000``, ``1_000``), at least ``minimum``."""
        if not isinstance(value, str) or not _INT_RE.fullmatch(value):
            self.add(path, f"must be a whole number, got {describe(value)}")
            return None
        number = int(value)
        if number < 0:
            self.add(path, "must not be negative")
        elif number < minimum:
            self.add(path, f"must be at least {minimum}, got {number}")
        else:
            return number
        return None

    def money(self, value: Tree, path: KeyPath, *, max_places: int) -> Decimal | None:
        """An exact non-negative amount with at most ``max_places`` decimal places."""
        if not isinstance(value, str):
            self.add(path, f"must be a decimal number, got {describe(value)}")
            return None
        try:
            return parse_money(value, max_places=max_places)
        except InvalidArgument as exc:
            self.add(path, exc.message)
            return None

    def choice(self, value: Tree, path: KeyPath, choices: Iterable[str]) -> str | None:
        options = sorted(choices)
        if isinstance(value, str) and value in options:
            return value
        self.add(path, f"must be one of {', '.join(options)}, got {describe(value)}")
        return None


def describe(value: Tree) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value[:40])
