"""Would-be denials of shadow limits, as ``consume.lua`` counts them (read for GetUsage).

The script adds 1 to ``keys.shadow_key`` field ``<metric>/<window>|<hour start>`` for every
admitted call a shadow limit would have refused; the hash lives ``SHADOW_RETENTION_SECONDS``
past its last hour. They stay in Redis only (a trial's signal, not billing data): a Redis that
loses its data loses them.
"""

from __future__ import annotations

from datetime import datetime

from redis.exceptions import RedisError

from quotaplane.domain.errors import Unavailable
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.client import RedisClient


class RedisShadowDenials:
    """ShadowDenialCounts on the counters' Redis."""

    def __init__(self, client: RedisClient, *, key_prefix: str) -> None:
        self._client = client
        self._prefix = key_prefix

    async def counts(
        self, tenant_id: str, metric: str, start: datetime, end: datetime
    ) -> dict[str, int]:
        """Per shadow limit of ``metric``: would-be denials in hours ``start <= hour < end``."""
        try:
            raw = await self._client.hgetall(keys.shadow_key(self._prefix, tenant_id))
        except (RedisError, OSError) as error:
            raise Unavailable(f"Redis is unavailable: {type(error).__name__}: {error}") from None
        first, last = start.timestamp(), end.timestamp()
        totals: dict[str, int] = {}
        for field, count in raw.items():
            name, hour = keys.parse_shadow_field(_text(field))
            if name.partition("/")[0] == metric and first <= hour < last:
                totals[name] = totals.get(name, 0) + int(count)
        return totals


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
