"""The plans version poller: a replica serves the newest stored version, parses only that one,
and keeps serving what it has when a stored document cannot be read."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.ports import PlanVersion, VersionTaken
from quotaplane.domain.plans.registry import PlanAdmin, PlanRegistry
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.services.plan_versions import PlanVersionPoller

V1 = "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 10}\n"
V2 = "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 20}\n"
V3 = "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 30}\n"
T0 = datetime(2026, 12, 1, tzinfo=UTC)


class MemoryVersions:
    def __init__(self) -> None:
        self.rows: list[PlanVersion] = []

    async def latest(self) -> PlanVersion | None:
        return self.rows[-1] if self.rows else None

    async def get(self, version: int) -> PlanVersion | None:
        return next((row for row in self.rows if row.version == version), None)

    async def append(self, *, after: int, **fields: str) -> PlanVersion:
        if any(row.version == after + 1 for row in self.rows):
            raise VersionTaken("taken")
        stamp = T0 + timedelta(seconds=len(self.rows))
        row = PlanVersion(version=after + 1, applied_at=stamp, **fields)
        self.rows.append(row)
        return row

    async def history(self, *, before: int | None, limit: int) -> list[PlanVersion]:
        rows = [r for r in reversed(self.rows) if before is None or r.version < before]
        return rows[:limit]

    async def changed_since(self, since: datetime | None) -> list[PlanVersion]:
        return [row for row in self.rows if since is None or row.applied_at >= since]


class NoTenants:
    async def plans_in_use(self) -> set[str]:
        return set()

    async def overrides_in_use(self) -> list[tuple[str, str, None]]:
        return []

    async def list_page(self, **_: object) -> list[object]:
        return []


async def _parse(document: str, source: str) -> PlanCatalog:
    return parse_plans(document, source)


def _replica(store: MemoryVersions) -> tuple[PlanRegistry, PlanAdmin, PlanVersionPoller]:
    async def read() -> str:
        return V1

    registry = PlanRegistry(parse_plans(V1, "f"), read=read, lock=asyncio.Lock())
    admin = PlanAdmin(registry, NoTenants(), store, _parse)  # type: ignore[arg-type]
    return registry, admin, PlanVersionPoller(store, admin)


def _quota(registry: PlanRegistry) -> int:
    return registry.current.get("starter").limits_for("requests")[0].limit


async def test_a_replica_serves_the_newest_version_and_skips_one_it_cannot_read() -> None:
    store = MemoryVersions()
    registry_a, admin_a, _ = _replica(store)
    registry_b, _, poller_b = _replica(store)
    await admin_a.apply(V2, source="v2.yaml", applied_by="admin")
    await admin_a.apply(V3, source="v3.yaml", applied_by="admin")
    assert (registry_a.current.version, _quota(registry_a)) == (2, 30)
    await poller_b.refresh()
    assert (registry_b.current.version, _quota(registry_b)) == (2, 30)
    unreadable = dataclasses.replace(
        store.rows[-1], version=3, document="plans: {", applied_at=T0 + timedelta(seconds=2)
    )
    store.rows.append(unreadable)  # e.g. written by a newer build
    await poller_b.refresh()
    assert (registry_b.current.version, _quota(registry_b)) == (2, 30)
    await admin_a.apply(V2, source="v2.yaml", applied_by="admin")
    await poller_b.refresh()
    assert (registry_b.current.version, _quota(registry_b)) == (4, 20)
