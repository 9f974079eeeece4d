"""API keys: secrets, their hashes and the admin use cases.

A secret is ``qp_live_`` + 32 random bytes (urlsafe base64, 43 characters). Only its SHA-256
(hex) is stored, with the first ``PREFIX_LENGTH`` characters for display; the secret is in the
CreateApiKey response once and nowhere else. A plain hash is enough (no HMAC, no slow KDF):
the secret has 256 bits of entropy, so nothing can be guessed from the hash, and a fast hash
keeps ext_authz lookups cheap.

Revoking is idempotent: revoking a revoked key answers the key with its original
``revoked_at`` (a retried revoke must not fail, and the first revocation time stays true).

Which tenant a presented secret belongs to is answered from memory by the key cache
(``services/key_cache.py``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets

from quotaplane.domain.errors import InvalidArgument, NotFound
from quotaplane.domain.tenants.model import ApiKey, parse_tenant_id
from quotaplane.domain.tenants.ports import ApiKeyStore, TenantSource

log = logging.getLogger(__name__)

SECRET_PREFIX = "qp_live_"
SECRET_BYTES = 32
PREFIX_LENGTH = 12
MAX_KEY_NAME = 100
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
