"""Telemetry: OpenTelemetry metrics exported for Prometheus, and the tracer for RPC spans.

This module owns every metric name quotaplane exports and the one object, ``Telemetry``, that
the other parts call to record them. Metrics go through the OpenTelemetry SDK into a
``PrometheusMetricReader`` registered with a private prometheus_client registry (private so
that several runtimes in one process, as in the tests, never collide), served over HTTP by
``start_http``. An instrument that is never recorded is never exported, so the endpoint shows
only what really happened.

Tenant labels are bounded: with ``tenant_labels=0`` every tenant is ``all``; with N > 0 the
first N distinct tenants seen since start keep their own label and the rest are ``other``.
"""

from __future__ import annotations

import logging
import threading
from typing import Final
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import Tracer
from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

log = logging.getLogger(__name__)

# OpenTelemetry instrument names; the Prometheus names (what dashboards and alerts query) are in
# the comments: dots become underscores, unit "s" adds _seconds, counters add _total.
RPC_REQUESTS: Final = "quotaplane.rpc.requests"  # quotaplane_rpc_requests_total
RPC_DURATION: Final = "quotaplane.rpc.duration"  # quotaplane_rpc_duration_seconds
DECISIONS: Final = "quotaplane.quota.decisions"  # quotaplane_quota_decisions_total
QUOTA_USED: Final = "quotaplane.quota.used.ratio"  # quotaplane_quota_used_ratio
REDIS_DURATION: Final = "quotaplane.redis.duration"  # quotaplane_redis_duration_seconds
DB_DURATION: Final = "quotaplane.db.duration"  # quotaplane_db_duration_seconds
FLUSH_LAG: Final = "quotaplane.usage.flush.lag"  # quotaplane_usage_flush_lag_seconds
PENDING_UNITS: Final = "quotaplane.usage.pending.units"  # quotaplane_usage_pending_units
STRIPE_PUSHES: Final = "quotaplane.stripe.pushes"  # quotaplane_stripe_pushes_total
INVOICED_MINOR: Final = "quotaplane.invoiced.minor_units"  # quotaplane_invoiced_minor_units_total

# Sub-millisecond to 200 ms in fine steps (the p99 target is 2 ms, the alert fires at 200 ms),
# then coarse steps for the slow admin and billing calls.
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
    10.0,
)
DECISION_OUTCOMES: Final = frozenset({"ok", "over_limit", "suspended", "unauthenticated"})
STRIPE_OUTCOMES: Final = frozenset({"ok", "retried", "failed"})
ALL_TENANTS: Final = "all"
OTHER_TENANTS: Final = "other"
UNKNOWN_TENANT: Final = "unknown"


class TenantLabels:
    """Maps tenant ids to a bounded set of label values (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("tenant label limit must be >= 0")
        self._limit = limit
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


class Telemetry:
    """Metric instruments, the RPC tracer, and the Prometheus endpoint of one server."""

    def __init__(
        self,
        *,
        tenant_labels: int = 0,
        traces: str = "off",
        span_exporter: SpanExporter | None = None,
        service_name: str = "quotaplane",
    ) -> None:
        """``traces``: off | console. ``span_exporter`` (tests) overrides the choice."""
        resource = Resource.create({"service.name": service_name})
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self._reader = PrometheusMetricReader(scope_info_enabled=False, registry=self.registry)
        self._meters = MeterProvider(
            resource=resource, metric_readers=[self._reader], views=_latency_views()
        )
        self.tenants = TenantLabels(tenant_labels)
        self._create_instruments()
        self._tracers = _tracer_provider(resource, traces, span_exporter)
        self.tracer: Tracer = self._tracers.get_tracer("quotaplane")
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def _create_instruments(self) -> None:
        meter = self._meters.get_meter("quotaplane")
        self._rpc_requests = meter.create_counter(RPC_REQUESTS, unit="1", description="RPCs")
        self._rpc_duration = meter.create_histogram(
            RPC_DURATION, unit="s", description="RPC handling time by method and gRPC code"
        )
        self._decisions = meter.create_counter(
            DECISIONS, unit="1", description="Quota decisions by metric, outcome and tenant"
        )
        self._quota_used = meter.create_gauge(
            QUOTA_USED, unit="1", description="Share of a limit used, per named tenant"
        )
        self._redis = meter.create_histogram(REDIS_DURATION, unit="s", description="Redis calls")
        self._db = meter.create_histogram(DB_DURATION, unit="s", description="Ledger queries")
        self._flush_lag = meter.create_gauge(
            FLUSH_LAG, unit="s", description="Age of the oldest usage not yet in the ledger"
        )
        self._pending = meter.create_gauge(
            PENDING_UNITS, unit="1", description="Admitted units waiting in Redis for the ledger"
        )
        self._stripe = meter.create_counter(
            STRIPE_PUSHES, unit="1", description="Invoice pushes to Stripe by outcome"
        )
        self._invoiced = meter.create_counter(
            INVOICED_MINOR, unit="1", description="Finalized invoice totals in minor units"
        )

    # -- recorded by the gRPC interceptor -------------------------------------------------

    def record_rpc(self, method: str, code: str, seconds: float) -> None:
        """One finished RPC: ``method`` is "package.Service/Method", ``code`` e.g. "OK"."""
        attributes = {"method": method, "code": code}
        self._rpc_requests.add(1, attributes)
        self._rpc_duration.record(seconds, attributes)

    def record_decision(
        self, metric: str, outcome: str, tenant_id: str, source: str = "check_quota"
    ) -> None:
        """One decision: ``outcome`` in DECISION_OUTCOMES, ``source`` check_quota or ext_authz."""
        if outcome not in DECISION_OUTCOMES:
            raise ValueError(f"unknown decision outcome {outcome!r}")
        self._decisions.add(
            1,
            {
                "metric": metric,
                "outcome": outcome,
                "tenant": self.tenants.label(tenant_id),
                "source": source,
            },
        )

    def observe_quota_usage(
        self, tenant_id: str, limit_name: str, limit: int, remaining: int
    ) -> None:
        """Share of ``limit_name`` used after a decision; kept only for tenants with own labels.

        A last-value gauge folded over many tenants would show whichever was last, so ``all``
        and ``other`` are not recorded.
        """
        label = self.tenants.label(tenant_id)
        if limit > 0 and self.tenants.is_own(label):
            used = (limit - remaining) / limit
            self._quota_used.set(used, {"tenant": label, "limit": limit_name})

    # -- recorded by storage, flush and billing (wired in the composition root) --------------

    def observe_redis(self, seconds: float, operation: str = "consume") -> None:
        self._redis.record(seconds, {"operation": operation})

    def observe_db(self, seconds: float, operation: str = "query") -> None:
        self._db.record(seconds, {"operation": operation})

    def set_flush_lag(self, seconds: float) -> None:
        self._flush_lag.set(max(0.0, seconds))

    def set_pending_units(self, units: int) -> None:
        self._pending.set(max(0, units))

    def record_stripe_push(self, outcome: str) -> None:
        """``outcome``: ok | retried | failed (anything else is counted as failed)."""
        self._stripe.add(1, {"outcome": outcome if outcome in STRIPE_OUTCOMES else "failed"})

    def record_invoice_total(self, currency: str, minor_units: int) -> None:
        """A finalized invoice's total; an integer of minor units, never a float amount."""
        if minor_units < 0:
            raise ValueError("an invoice total is never negative")
        self._invoiced.add(minor_units, {"currency": currency.upper()})

    # -- endpoint and lifecycle -------------------------------------------------------------

    def start_http(self, addr: str) -> int | None:
        """Serve /metrics on ``addr`` ("host:port", port 0 = any); returns the bound port.

        A port that cannot be bound is logged and skipped (None): losing the scrape endpoint
        must not stop the quota service, and Prometheus' ``up == 0`` shows the gap.
        """
        host, _, port = addr.rpartition(":")
        try:
            server, thread = start_http_server(
                int(port), addr=host.strip("[]"), registry=self.registry
            )
        except OSError as exc:
            log.error("metrics endpoint not started", extra={"addr": addr, "error": str(exc)})
            return None
        self._http, self._http_thread = server, thread
        bound = int(server.server_address[1])
        log.info("metrics endpoint listening", extra={"addr": addr, "port": bound})
        return bound

    def scrape(self) -> str:
        """The Prometheus text exposition, as the endpoint would serve it."""
        return generate_latest(self.registry).decode()

    def shutdown(self) -> None:
        """Stop the endpoint, flush and stop the span processors and the meter provider."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None
        self._tracers.shutdown()
        self._meters.shutdown()


def _latency_views() -> list[View]:
    aggregation = ExplicitBucketHistogramAggregation(boundaries=LATENCY_BUCKETS)
    return [
        View(instrument_name=name, aggregation=aggregation)
        for name in (RPC_DURATION, REDIS_DURATION, DB_DURATION)
    ]


def _tracer_provider(
    resource: Resource, traces: str, span_exporter: SpanExporter | None
) -> TracerProvider:
    """Spans are sampled only when something exports them; otherwise they cost next to nothing."""
    if span_exporter is not None:
        provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif traces == "console":
        provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif traces == "off":
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    else:
        raise ValueError(f"traces must be off or console, not {traces!r}")
    return provider
