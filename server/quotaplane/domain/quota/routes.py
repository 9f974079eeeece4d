"""The gateway's route table: which metric a request path is charged on, and how many units.

Envoy's HTTP ext_authz (``http_service``) forwards the original request path (after its
``path_prefix``) but none of the route's ``context_extensions``, so the cost of a route comes
from quotaplane's own configuration, never from anything a client sends:

    QUOTAPLANE_AUTHZ_ROUTES="/v1/rate/bulk=requests:10,/v1/export/*=exports:1"

Each entry is ``PATH=METRIC[:COST]``. A PATH ending in ``*`` matches every path that starts
with what precedes the ``*``; any other PATH matches exactly. The query string is never part of
the match. An exact entry beats a prefix entry, and a longer prefix beats a shorter one. A path
no entry matches costs ``DEFAULT_ROUTE`` (1 unit of ``requests``). The table is validated in
full at start (``RouteTable.parse``): a malformed entry stops the server with a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.quota.decisions import DEFAULT_METRIC, parse_metric
from quotaplane.domain.quota.gateway import RouteMisconfigured, parse_route_cost

MAX_ROUTES = 1000
# Paths a tenant's credential is checked on but no unit is charged for: the tenant reading its
# own usage (transport/http/tenant_api.py serves it behind Envoy).
USAGE_PATH = "/v1/usage"
UNMETERED_PATHS = frozenset({USAGE_PATH})


@dataclass(frozen=True)
class RouteCost:
    metric: str
    cost: int


DEFAULT_ROUTE = RouteCost(DEFAULT_METRIC, 1)


def parse_cost(text: str) -> int:
    """The gateway's rule for a route cost (``parse_route_cost``), as a configuration error."""
    try:
        return parse_route_cost(text)
    except RouteMisconfigured as problem:
        raise InvalidArgument(str(problem)) from None


def _parse_entry(entry: str) -> tuple[str, RouteCost]:
    path, sep, target = entry.partition("=")
    path, target = path.strip(), target.strip()
    if not sep or not path.startswith("/") or not path.isascii() or " " in path:
        raise InvalidArgument(f"route {entry!r}: expected /path=metric[:cost]")
    if "*" in path[:-1]:
        raise InvalidArgument(f"route {entry!r}: '*' may only end a path")
    metric, _, cost = target.partition(":")
    if not metric:
        raise InvalidArgument(f"route {entry!r}: a metric is required")
    return path, RouteCost(parse_metric(metric), parse_cost(cost) if cost else 1)


class RouteTable:
    """Path -> RouteCost, built once at start."""

    def __init__(self, exact: dict[str, RouteCost], prefixes: list[tuple[str, RouteCost]]):
        self._exact = exact
        self._prefixes = sorted(prefixes, key=lambda item: -len(item[0]))  # longest first

    @classmethod
    def parse(cls, text: str) -> RouteTable:
        """``PATH=METRIC[:COST]`` entries separated by commas; InvalidArgument on any flaw."""
        entries = [e.strip() for e in text.split(",") if e.strip()]
        if len(entries) > MAX_ROUTES:
            raise InvalidArgument(f"at most {MAX_ROUTES} routes, got {len(entries)}")
        exact: dict[str, RouteCost] = {}
        prefixes: list[tuple[str, RouteCost]] = []
        for entry in entries:
            path, route = _parse_entry(entry)
            seen = {p for p, _ in prefixes} if path.endswith("*") else exact
            if path.rstrip("*") in seen:
                raise InvalidArgument(f"route {path!r} is listed twice")
            if path.endswith("*"):
                prefixes.append((path[:-1], route))
            else:
                exact[path] = route
        return cls(exact, prefixes)

    def __len__(self) -> int:
        return len(self._exact) + len(self._prefixes)

    def _entries(self) -> tuple[object, ...]:
        return tuple(sorted(self._exact.items())), tuple(self._prefixes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RouteTable) and self._entries() == other._entries()

    def __hash__(self) -> int:
        return hash(self._entries())

    def __repr__(self) -> str:
        entries = [f"{p}={r.metric}:{r.cost}" for p, r in sorted(self._exact.items())]
        entries += [f"{p}*={r.metric}:{r.cost}" for p, r in self._prefixes]
        return f"RouteTable({','.join(entries)!r})"

    def lookup(self, path: str) -> RouteCost:
        """The route of a request path (its query string is ignored)."""
        path = path.partition("?")[0]
        if (route := self._exact.get(path)) is not None:
            return route
        for prefix, route in self._prefixes:
            if path.startswith(prefix):
                return route
        return DEFAULT_ROUTE
