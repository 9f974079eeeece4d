"""Every Redis key quotaplane writes is named here, and only here.

Each key carries the tenant id as a hash tag (``{<tenant>}``), so all keys one CheckQuota
touches hash to the same Redis Cluster slot and the consume script runs unchanged on a
cluster. Layout (``<p>`` = the deployment's key prefix):

- ``<p>:{<tenant>}:c:<metric>:<window>:<window_start_epoch>``: units consumed in one window.
- ``<p>:{<tenant>}:unflushed``: hash of admitted units the ledger has not taken yet; fields
  ``<metric>|<hour_start_epoch>`` (units) and ``<metric>|<hour_start_epoch>|overage``.
- ``<p>:{<tenant>}:req:<request_id>``: the first decision for a request id (replay).
- ``<p>:{<tenant>}:shadow``: hash of admitted calls a shadow limit would have refused; fields
  ``<metric>/<window>|<hour_start_epoch>``, kept ``SHADOW_RETENTION_SECONDS`` after the hour.
"""

from __future__ import annotations

OVERAGE_SUFFIX = "|overage"
SHADOW_RETENTION_SECONDS = 40 * 24 * 3600  # a month and its invoice run


def tenant_tag(prefix: str, tenant_id: str) -> str:
    """``<p>:{<tenant>}``: the common start of every key of one tenant."""
    return f"{prefix}:{{{tenant_id}}}"


def counter_key(prefix: str, tenant_id: str, metric: str, window: str, start_epoch: int) -> str:
    return f"{tenant_tag(prefix, tenant_id)}:c:{metric}:{window}:{start_epoch}"


def unflushed_key(prefix: str, tenant_id: str) -> str:
    return f"{tenant_tag(prefix, tenant_id)}:unflushed"


def dedup_key(prefix: str, tenant_id: str, request_id: str) -> str:
    return f"{tenant_tag(prefix, tenant_id)}:req:{request_id}"


def unflushed_field(metric: str, hour_start_epoch: int) -> str:
    """Field of the unflushed hash holding a metric's admitted units of one UTC hour."""
    return f"{metric}|{hour_start_epoch}"


def overage_field(metric: str, hour_start_epoch: int) -> str:
    """Field holding the part of those units admitted past a ``bill`` limit."""
    return unflushed_field(metric, hour_start_epoch) + OVERAGE_SUFFIX


def parse_unflushed_field(field: str) -> tuple[str, int, bool]:
    """``"requests|1767225600|overage"`` -> ("requests", 1767225600, True)."""
    metric, _, rest = field.partition("|")
    hour, _, kind = rest.partition("|")
    return metric, int(hour), kind == "overage"


def shadow_key(prefix: str, tenant_id: str) -> str:
    return f"{tenant_tag(prefix, tenant_id)}:shadow"


def shadow_field(limit_name: str, hour_start_epoch: int) -> str:
    """Field of the shadow hash: one shadow limit's would-be denials in one UTC hour."""
    return f"{limit_name}|{hour_start_epoch}"


def parse_shadow_field(field: str) -> tuple[str, int]:
    """``"requests/second|1767225600"`` -> ("requests/second", 1767225600)."""
    name, _, hour = field.rpartition("|")
    return name, int(hour)
