"""Tenant label values for metrics, bounded: with a limit of 0 every tenant is ``all``; with
N > 0 the first N distinct tenants seen since start keep their own label and the rest are
``other``, so a flood of tenants cannot grow a metric's series without bound.
"""

from __future__ import annotations

import threading
from typing import Final

ALL_TENANTS: Final = "all"
OTHER_TENANTS: Final = "other"
UNKNOWN_TENANT: Final = "unknown"


class TenantLabels:
    """Maps tenant ids to a bounded set of label values (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("tenant label limit must be >= 0")
        self._limit = limit
        self.named = limit > 0  # whether any tenant gets a label of its own
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def label(self, tenant_id: str) -> str:
        if self._limit == 0:
            return ALL_TENANTS
        if not tenant_id:
            return UNKNOWN_TENANT
        if tenant_id in self._kept:
            return tenant_id
        with self._lock:
            if len(self._kept) < self._limit:
                self._kept.add(tenant_id)
                return tenant_id
        return OTHER_TENANTS

    def is_own(self, label: str) -> bool:
        """True when ``label`` names one tenant (not all/other/unknown)."""
        return label in self._kept
