"""Plan ports: the plans documents stored as versions in the ledger.

``storage/sql/plan_versions.py`` implements it; ``services/plan_versions.py`` polls it so
every replica serves the newest version. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class PlanVersion:
    """One applied plans document. Versions only grow: a rollback stores a new version whose
    document is an older one's."""

    version: int
    document: str  # the plans YAML as applied
    digest: str  # what it says (documents.digest): equal digests mean equal plans
    source: str  # where it came from: a file path, "ApplyPlans", ...
    applied_by: str  # the credential's name (the token's role), or "serve" at start
    applied_at: datetime
    note: str = ""  # e.g. "rollback to version 3"


class VersionTaken(Exception):
    """Another replica stored the version number first; read the newest and decide again."""


class PlanVersionStore(Protocol):
    async def latest(self) -> PlanVersion | None:
        """The newest version, None before the first."""
        ...

    async def get(self, version: int) -> PlanVersion | None: ...

    async def append(
        self,
        *,
        after: int,
        document: str,
        digest: str,
        source: str,
        applied_by: str,
        note: str = "",
    ) -> PlanVersion:
        """Store the document as version ``after + 1``; VersionTaken if that number exists
        (another replica applied meanwhile)."""
        ...

    async def history(self, *, before: int | None, limit: int) -> list[PlanVersion]:
        """Up to ``limit`` versions, newest first, older than ``before`` when given."""
        ...

    async def changed_since(self, since: datetime | None) -> list[PlanVersion]:
        """Versions applied at or after ``since``, oldest first; for None (a first load) the
        newest version alone, since older ones are never served again."""
        ...
