"""The Grafana dashboard and the Prometheus rules query only metrics the server exports.

The exported names come from a real ``Telemetry`` with one of each recording, scraped as text
(so ``_total``, ``_bucket``, ``_count`` and ``_sum`` are as Prometheus sees them). When
``promtool`` is installed (Debian: ``apt-get install prometheus``) it also checks the rules, the
scrape config, and the dashboard's PromQL (wrapped as recording rules).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from quotaplane.telemetry import Telemetry, write_reconcile_textfile

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "quotaplane-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULES_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Series Prometheus makes itself for every target, not the server.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {
    "by",
    "without",
    "and",
    "or",
    "unless",
    "offset",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)


@pytest.fixture(scope="module")
def exported() -> Iterator[set[str]]:
    """Sample names of a Telemetry on which every recording method was called once."""
    t = Telemetry(tenant_labels=5)
    try:
        t.record_rpc("quotaplane.v1.QuotaService/CheckQuota", "OK", 0.001)
        t.record_decision("requests", "ok", "t1", "check_quota")
        t.observe_quota_usage("t1", "requests/month", limit=100, remaining=10)
        t.observe_redis(0.0004)
        t.observe_db(0.003)
        t.set_flush_lag(1.5)
        t.set_pending_units(3)
        t.record_stripe_push("failed")
        t.record_invoice_total("USD", 52)
        t.record_meter_event("too_old")
        with tempfile.TemporaryDirectory() as directory:  # billing reconcile's batch-job file
            textfile = Path(directory) / "reconcile.prom"
            write_reconcile_textfile(str(textfile), "2026-11", {"meter": 1, "invoice": 0})
            batch = textfile.read_text()
        yield {
            s.name
            for text in (t.scrape(), batch)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
    finally:
        t.shutdown()


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left once strings, label matchers, ranges,
    grouping clauses, function calls, keywords and numbers are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    tokens = re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text)
    return {m[1] for m in tokens if m[2] is None and m[1] not in PROMQL_WORDS}


def test_the_name_finder_sees_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{m=~"x|y"}[5m]))) > 3 * '
        "sum(rate(b_total[1h] offset 5m)) and on (tenant) c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_the_dashboard_has_panels_with_queries() -> None:
    assert len(dashboard_exprs()) >= 10


def test_every_metric_the_dashboard_queries_is_exported(exported: set[str]) -> None:
    queried = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    assert queried, "no metric names found in the dashboard"
    assert queried - exported == set()


def test_every_metric_the_rules_query_is_exported(exported: set[str]) -> None:
    queried = {name for rule in rules() for name in metric_names(rule["expr"])}
    assert queried - exported - PROMETHEUS_SERIES == set()


def test_the_rules_file_has_the_prometheus_rule_group_shape() -> None:
    loaded = yaml.safe_load(RULES.read_text())
    assert set(loaded) == {"groups"}
    for group in loaded["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in {"page", "ticket"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_rules_cover_the_alerts_operators_asked_for() -> None:
    queried = " ".join(rule["expr"] for rule in rules())
    for needle in (
        'outcome="over_limit"',
        "> 0.2",
        "quotaplane_rpc_requests_total",
        "quotaplane_usage_flush_lag_seconds",
        "quotaplane_stripe_pushes_total",
        "quotaplane_stripe_meter_events_total",
        "quotaplane_billing_reconcile_difference",
    ):
        assert needle in queried


@needs_promtool
@pytest.mark.timeout(30)
def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.timeout(30)
def test_promtool_rule_tests_pass() -> None:
    """deploy/prometheus/alerts_test.yml: the billing alerts fire on the series they watch."""
    result = _promtool("test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.timeout(30)
def test_promtool_accepts_the_scrape_config() -> None:
    result = _promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.timeout(30)
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    records = []
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        records.append({"record": f"dashboard:panel_query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=20, check=False
    )
