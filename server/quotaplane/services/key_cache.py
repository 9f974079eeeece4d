"""The in-process API key cache: which tenant a presented secret belongs to, from memory.

Same mechanism as the tenant directory (``polled_cache.py``): a full load at start, then a
poll every ``cache_ttl / 2`` for keys created or revoked since the newest change seen (minus
``OVERLAP`` for clock skew between replicas and late commits). A revoked key therefore stops
working on every replica within ``cache_ttl`` (1 s) of the revoke's commit. A miss (a key
created a moment ago, or a made-up key) never queries by hash: it waits for a catch-up poll
(``CatchUp``) that every miss of the moment shares and that runs at most every
``CATCH_UP_GAP`` seconds, so a flood of distinct random keys costs at most
1/CATCH_UP_GAP + 2 small queries per second, and a new key works on its first request
(after at most ~CATCH_UP_GAP). Unknown hashes are remembered for one poll interval, so a
repeated bad key answers at once. If the database is down,
polls log and retry; cached keys keep working (a ledger outage must not stop the API), and the
revocations made meanwhile apply at the first successful poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from quotaplane.domain.tenants.api_keys import hash_api_key, looks_like_secret
from quotaplane.domain.tenants.ports import ApiKeyStore, KeyGrant
from quotaplane.services.polled_cache import CatchUp, PolledCache

# Catch-up polls for cache misses start at most this often (seconds): the bound on queries
# per second that misses can cause, and the longest wait of a brand-new key's first request.
CATCH_UP_GAP = 0.1


class ApiKeyCache(PolledCache[KeyGrant]):
    """Secret -> (tenant_id, key_id) from memory; see the module docstring for freshness."""

    what = "API key"

    def __init__(
        self,
        store: ApiKeyStore,
        *,
        ttl: timedelta = timedelta(seconds=1),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(store.changed_since, ttl=ttl, monotonic=monotonic)
        self._grants: dict[str, KeyGrant] = {}  # key hash -> valid (unrevoked) key
        # Revocations seen: a lookup that raced with a poll must not bring a revoked key back.
        self._revoked: set[str] = set()
        self._catch_up = CatchUp(self.refresh, min_gap=CATCH_UP_GAP, monotonic=monotonic)

    def __len__(self) -> int:
        return len(self._grants)

    async def tenant_for_key(self, secret: str) -> tuple[str, str] | None:
        """``(tenant_id, key_id)`` of a valid key, None for an unknown or revoked one."""
        if not looks_like_secret(secret):
            return None
        key_hash = hash_api_key(secret)
        grant = self._grants.get(key_hash)
        if grant is None:
            grant = await self._lookup(key_hash)
        return None if grant is None else (grant.tenant_id, grant.key_id)

    def _apply(self, grant: KeyGrant) -> None:
        if grant.revoked_at is None:
            if grant.key_hash not in self._revoked:
                self._grants[grant.key_hash] = grant
                self._unknown.discard(grant.key_hash)
        else:
            self._revoked.add(grant.key_hash)
            self._grants.pop(grant.key_hash, None)

    @staticmethod
    def _changed_at(grant: KeyGrant) -> datetime:
        return grant.changed_at

    async def _lookup(self, key_hash: str) -> KeyGrant | None:
        if key_hash in self._unknown:
            return None
        await self._catch_up.wait()
        grant = self._grants.get(key_hash)
        if grant is None:
            self._unknown.add(key_hash)
        return grant
