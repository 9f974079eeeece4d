"""Redis clients from operator URLs: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``.

Every socket operation is bounded by the configured timeout and nothing is retried here: a
retry that stacks on a timeout would turn a 100 ms bound into seconds. A broken connection is
dropped and the next command opens a new one, so the client recovers by itself when Redis
comes back. ``redis+cluster://host:port`` selects Redis Cluster (any node seeds the topology).
"""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

CLUSTER_SCHEME = "redis+cluster://"
MAX_CONNECTIONS = 64


def redis_client(url: str, *, timeout: float) -> Redis | RedisCluster:
    """A client for ``url`` whose connects and reads give up after ``timeout`` seconds."""
    if url.startswith(CLUSTER_SCHEME):
        return RedisCluster.from_url(
            "redis://" + url.removeprefix(CLUSTER_SCHEME),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            max_connections=MAX_CONNECTIONS,
        )
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        max_connections=MAX_CONNECTIONS,
    )
