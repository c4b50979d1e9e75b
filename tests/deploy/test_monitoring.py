"""The operators' kit (issue 18): the Grafana dashboard and the Prometheus alerting rules
under deploy/ parse, cover what operators must hear about, and name only metrics (and
labels) that the services really export."""

from __future__ import annotations

import importlib
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "monitoring" / "dashboard.json"
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "monitoring"
PROMETHEUS_RULE = COMPONENT / "prometheusrule.yaml"
DASHBOARD_CONFIG_MAP = COMPONENT / "grafana-dashboard.yaml"
SERVICES = ("gateway", "identity", "portals", "invitations", "mailer")

METRIC = re.compile(r"\b(clientpress_[a-z0-9_]+)(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
# Labels Prometheus adds when it scrapes, or that a histogram's buckets carry.
SCRAPE_LABELS = {"instance", "job", "pod", "namespace", "container", "le"}


@cache
def exported() -> dict[str, set[str]]:
    """Every sample name the services can export, with its labels."""
    for service in SERVICES:
        importlib.import_module(f"services.{service}.app")
    # The registry's own table: every sample name (x_total, x_bucket, …) to its collector.
    table = REGISTRY._names_to_collectors  # type: ignore[attr-defined]
    names = {
        name: set(getattr(collector, "_labelnames", ()))
        for name, collector in table.items()
        if name.startswith("clientpress_") and not name.endswith("_created")
    }
    return names


def expressions_of_alerts() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def expressions_of_dashboard() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def check_names(where: str, expr: str) -> set[str]:
    known = exported()
    used = set()
    for name, selector in METRIC.findall(expr):
        assert name in known, f"{where}: {name} is not exported by any service"
        used.add(name)
        for label in MATCHER.findall(selector or ""):
            assert label in known[name] | SCRAPE_LABELS, f"{where}: {name} has no label {label}"
    assert used, f"{where}: names no ClientPress metric"
    return used


def test_the_exported_names_are_seen() -> None:
    # The check below is only as good as this list: the shared and per-service metrics.
    names = exported()
    for expected in (
        "clientpress_http_requests_total",
        "clientpress_http_request_duration_seconds_bucket",
        "clientpress_outbox_backlog",
        "clientpress_emails_failed_total",
        "clientpress_build_info",
    ):
        assert expected in names
    assert names["clientpress_http_requests_total"] == {"method", "route", "status"}


def test_alert_rules_parse_and_cover_what_operators_must_hear() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    alerts = {rule["alert"] for rule in rules}
    assert len(alerts) == len(rules), "alert names are unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    used = set()
    for alert, expr in expressions_of_alerts():
        used |= check_names(alert, expr)
    # outbox backlog, dead letters, mail failures, 5xx rate, p99 latency
    assert {
        "clientpress_outbox_backlog",
        "clientpress_events_dead_lettered_total",
        "clientpress_emails_failed_total",
        "clientpress_http_requests_total",
        "clientpress_http_request_duration_seconds_bucket",
    } <= used
    assert any('status=~"5.."' in expr for _, expr in expressions_of_alerts())
    assert any("histogram_quantile(0.99" in expr for _, expr in expressions_of_alerts())


def test_dashboard_parses_and_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "clientpress" and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    used = set()
    for title, expr in expressions_of_dashboard():
        used |= check_names(title, expr)
    assert "clientpress_build_info" in used
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"


def test_the_kubernetes_component_carries_the_same_rules_and_dashboard() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], (
        "run: make monitoring-rules"
    )
    config_map = yaml.safe_load(DASHBOARD_CONFIG_MAP.read_text())
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["clientpress.json"]) == json.loads(
        DASHBOARD.read_text()
    ), "run: make monitoring-rules"
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        generator: Any = importlib.import_module("monitoring_rules")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for path, text in generator.rendered().items():
        assert path.read_text() == text, f"{path.name} is stale: run make monitoring-rules"
