"""API keys: secrets, their hashes, the admin use cases, and the in-process key cache.

A secret is ``qp_live_`` + 32 random bytes (urlsafe base64, 43 characters). Only its SHA-256
(hex) is stored, with the first ``PREFIX_LENGTH`` characters for display; the secret is in the
CreateApiKey response once and nowhere else. A plain hash is enough (no HMAC, no slow KDF):
the secret has 256 bits of entropy, so nothing can be guessed from the hash, and a fast hash
keeps ext_authz lookups cheap.

Revoking is idempotent: revoking a revoked key answers the key with its original
``revoked_at`` (a retried revoke must not fail, and the first revocation time stays true).

``ApiKeyCache`` answers "which tenant does this secret belong to" from memory, with the same
mechanism as the tenant directory (``domain/directory.py``): a full load at start, then a poll
every ``cache_ttl / 2`` for keys created or revoked since the newest change seen (minus
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

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from quotaplane.domain.admin_ports import ApiKeyStore, KeyGrant
from quotaplane.domain.errors import InvalidArgument, NotFound
from quotaplane.domain.model import ApiKey, parse_tenant_id
from quotaplane.domain.polling import CatchUp, NegativeCache, poll_forever, poll_since
from quotaplane.domain.ports import TenantSource

log = logging.getLogger(__name__)

SECRET_PREFIX = "qp_live_"
SECRET_BYTES = 32
PREFIX_LENGTH = 12
MAX_KEY_NAME = 100
# Catch-up polls for cache misses start at most this often (seconds): the bound on queries
# per second that misses can cause, and the longest wait of a brand-new key's first request.
CATCH_UP_GAP = 0.1
# qp_live_ + urlsafe base64 of 32 bytes without padding.
_SECRET_RE = re.compile(r"qp_live_[A-Za-z0-9_-]{43}")


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def hash_api_key(secret: str) -> str:
    """The stored form of a secret: SHA-256, lowercase hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    """What operators see of a key: ``qp_live_Ab12``."""
    return secret[:PREFIX_LENGTH]


def looks_like_secret(secret: str) -> bool:
    """True for strings shaped like our secrets; anything else needs no lookup."""
    return _SECRET_RE.fullmatch(secret) is not None


def parse_key_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidArgument("name is required (1-100 characters, e.g. 'production')")
    if len(name) > MAX_KEY_NAME or not name.isprintable():
        raise InvalidArgument(f"name must be 1-{MAX_KEY_NAME} printable characters")
    return name


class ApiKeyAdmin:
    """CreateApiKey, ListApiKeys, RevokeApiKey."""

    def __init__(self, keys: ApiKeyStore, tenants: TenantSource) -> None:
        self._keys = keys
        self._tenants = tenants

    async def create(self, *, tenant_id: str, name: str) -> tuple[ApiKey, str]:
        """The stored key and its secret; the secret is not kept anywhere."""
        tenant_id = parse_tenant_id(tenant_id)
        name = parse_key_name(name)
        await self._require_tenant(tenant_id)
        secret = generate_secret()
        key = await self._keys.create(
            tenant_id=tenant_id,
            name=name,
            prefix=display_prefix(secret),
            key_hash=hash_api_key(secret),
        )
        return key, secret

    async def list(self, *, tenant_id: str, include_revoked: bool) -> list[ApiKey]:
        tenant_id = parse_tenant_id(tenant_id)
        await self._require_tenant(tenant_id)
        return await self._keys.list_for_tenant(tenant_id, include_revoked=include_revoked)

    async def revoke(self, key_id: str) -> ApiKey:
        return await self._keys.revoke(parse_tenant_id(key_id, field_name="key_id"))

    async def _require_tenant(self, tenant_id: str) -> None:
        if await self._tenants.get(tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} does not exist")


class ApiKeyCache:
    """Secret -> (tenant_id, key_id) from memory; see the module docstring for freshness."""

    def __init__(
        self,
        store: ApiKeyStore,
        *,
        ttl: timedelta = timedelta(seconds=1),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = ttl.total_seconds()
        self._monotonic = monotonic
        self._grants: dict[str, KeyGrant] = {}  # key hash -> valid (unrevoked) key
        self._unknown = NegativeCache(self._ttl / 2, monotonic)  # key hashes matching nothing
        # Revocations seen: a lookup that raced with a poll must not bring a revoked key back.
        self._revoked: set[str] = set()
        self._watermark: datetime | None = None
        self._catch_up = CatchUp(self.refresh, min_gap=CATCH_UP_GAP, monotonic=monotonic)
        self.loaded = False

    @property
    def poll_interval(self) -> float:
        return self._ttl / 2

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

    async def refresh(self) -> int:
        """Apply every key created or revoked since the last poll; the number of rows read."""
        changed = await self._store.changed_since(poll_since(self._watermark))
        for grant in changed:
            self._apply(grant)
        self.loaded = True
        return len(changed)

    async def run(self) -> None:
        """Poll forever (cancel the task to stop). Errors are logged, never fatal."""
        await poll_forever(self.refresh, self.poll_interval, "API key")

    def _apply(self, grant: KeyGrant) -> None:
        if grant.revoked_at is None:
            if grant.key_hash not in self._revoked:
                self._grants[grant.key_hash] = grant
                self._unknown.discard(grant.key_hash)
        else:
            self._revoked.add(grant.key_hash)
            self._grants.pop(grant.key_hash, None)
        if self._watermark is None or grant.changed_at > self._watermark:
            self._watermark = grant.changed_at

    async def _lookup(self, key_hash: str) -> KeyGrant | None:
        if key_hash in self._unknown:
            return None
        await self._catch_up.wait()
        grant = self._grants.get(key_hash)
        if grant is None:
            self._unknown.add(key_hash)
        return grant
