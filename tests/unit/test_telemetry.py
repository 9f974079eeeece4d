"""Telemetry: bounded tenant labels, what the Prometheus text shows, the endpoint, the settings."""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quotaplane.config import ConfigError, load_settings
from quotaplane.telemetry import Telemetry
from quotaplane.tenant_labels import TenantLabels


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, keyed by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry(tenant_labels=2)
    try:
        yield t
    finally:
        t.shutdown()


def test_tenant_labels_off_fold_every_tenant_into_all() -> None:
    labels = TenantLabels(0)
    assert {labels.label(t) for t in ("a", "b", "")} == {"all"}


def test_top_n_keeps_the_first_n_tenants_and_folds_the_rest_into_other() -> None:
    labels = TenantLabels(2)
    seen = [labels.label(t) for t in ("a", "b", "c", "a", "d", "b")]
    assert seen == ["a", "b", "other", "a", "other", "b"]


def test_a_call_without_a_tenant_is_labelled_unknown() -> None:
    assert TenantLabels(3).label("") == "unknown"


def test_decisions_are_counted_by_metric_outcome_tenant_and_source(telemetry: Telemetry) -> None:
    for _ in range(3):
        telemetry.record_decision("requests", "over_limit", "t1", "ext_authz")
    text = telemetry.scrape()
    assert (
        value(
            text,
            "quotaplane_quota_decisions_total",
            metric="requests",
            outcome="over_limit",
            tenant="t1",
            source="ext_authz",
        )
        == 3
    )


def test_an_unknown_decision_outcome_is_refused(telemetry: Telemetry) -> None:
    with pytest.raises(ValueError, match="outcome"):
        telemetry.record_decision("requests", "maybe", "t1")


def test_instruments_never_recorded_are_not_exported(telemetry: Telemetry) -> None:
    telemetry.record_rpc("quotaplane.v1.QuotaService/CheckQuota", "OK", 0.001)
    names = {family.name for family in text_string_to_metric_families(telemetry.scrape())}
    assert "quotaplane_rpc_requests" in names
    assert not {"quotaplane_stripe_pushes", "quotaplane_usage_flush_lag_seconds"} & names


def test_latency_buckets_resolve_sub_millisecond_and_the_200ms_alert_line(
    telemetry: Telemetry,
) -> None:
    telemetry.record_rpc("quotaplane.v1.QuotaService/CheckQuota", "OK", 0.0003)
    text = telemetry.scrape()
    method = {"method": "quotaplane.v1.QuotaService/CheckQuota", "code": "OK"}
    assert value(text, "quotaplane_rpc_duration_seconds_bucket", le="0.00025", **method) == 0
    assert value(text, "quotaplane_rpc_duration_seconds_bucket", le="0.0005", **method) == 1
    assert value(text, "quotaplane_rpc_duration_seconds_bucket", le="0.2", **method) == 1


def test_quota_used_ratio_is_kept_only_for_tenants_with_their_own_label(
    telemetry: Telemetry,
) -> None:
    for tenant in ("a", "b", "c"):
        telemetry.observe_quota_usage(tenant, "requests/month", limit=200, remaining=50)
    text = telemetry.scrape()
    assert value(text, "quotaplane_quota_used_ratio", tenant="a", limit="requests/month") == 0.75
    assert (
        value(text, "quotaplane_quota_used_ratio", tenant="other", limit="requests/month") is None
    )


def test_an_unknown_stripe_outcome_counts_as_failed(telemetry: Telemetry) -> None:
    telemetry.record_stripe_push("exploded")
    assert value(telemetry.scrape(), "quotaplane_stripe_pushes_total", outcome="failed") == 1


def test_invoice_totals_add_up_in_minor_units_per_currency(telemetry: Telemetry) -> None:
    telemetry.record_invoice_total("usd", 52)
    telemetry.record_invoice_total("USD", 1000)
    assert (
        value(telemetry.scrape(), "quotaplane_invoiced_minor_units_total", currency="USD") == 1052
    )


def test_a_negative_invoice_total_is_refused(telemetry: Telemetry) -> None:
    with pytest.raises(ValueError):
        telemetry.record_invoice_total("USD", -1)


@pytest.mark.timeout(20)
def test_the_endpoint_serves_metrics_over_http_and_frees_its_port() -> None:
    t = Telemetry()
    try:
        port = t.start_http("127.0.0.1:0")
        assert port
        t.set_pending_units(12)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            body = reply.read().decode()
        assert value(body, "quotaplane_usage_pending_units") == 12
    finally:
        t.shutdown()
    with socket.socket() as probe:
        # SO_REUSEADDR tolerates the closed connection's TIME_WAIT, not a live listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()  # would raise if the endpoint still listened


@pytest.mark.timeout(20)
def test_a_busy_port_is_logged_and_the_endpoint_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        t = Telemetry()
        try:
            with caplog.at_level(logging.ERROR, logger="quotaplane.telemetry"):
                assert t.start_http(f"127.0.0.1:{busy.getsockname()[1]}") is None
        finally:
            t.shutdown()
    assert "metrics endpoint not started" in caplog.text


@pytest.mark.parametrize(
    ("raw", "expected"), [("off", 0), ("top-1", 1), ("TOP-50", 50), (" top-99999 ", 99999)]
)
def test_tenant_label_setting_accepts_off_and_top_n(raw: str, expected: int) -> None:
    settings = load_settings({"QUOTAPLANE_METRICS_TENANT_LABELS": raw})
    assert settings.metrics_tenant_labels == expected


@pytest.mark.parametrize("raw", ["on", "top-0", "top-", "top-x", "50", "top-100000"])
def test_tenant_label_setting_refuses_anything_else(raw: str) -> None:
    with pytest.raises(ConfigError, match="QUOTAPLANE_METRICS_TENANT_LABELS"):
        load_settings({"QUOTAPLANE_METRICS_TENANT_LABELS": raw})


@pytest.mark.parametrize(("raw", "expected"), [("off", "off"), ("0.0.0.0:0", "0.0.0.0:0")])
def test_metrics_addr_setting_accepts_off_and_host_port(raw: str, expected: str) -> None:
    assert load_settings({"QUOTAPLANE_METRICS_ADDR": raw}).metrics_addr == expected


def test_metrics_addr_setting_refuses_a_bare_port() -> None:
    with pytest.raises(ConfigError, match="QUOTAPLANE_METRICS_ADDR"):
        load_settings({"QUOTAPLANE_METRICS_ADDR": "9464"})


def test_traces_setting_refuses_an_exporter_we_do_not_ship() -> None:
    with pytest.raises(ConfigError, match="QUOTAPLANE_TRACES"):
        load_settings({"QUOTAPLANE_TRACES": "jaeger"})
