"""Write the Kubernetes monitoring component's manifests from deploy/monitoring/
(`make monitoring-rules`): prometheusrule.yaml, the Prometheus Operator's PrometheusRule with
the groups of alerts.yml, and grafana-dashboard.yaml, a ConfigMap holding dashboard.json
for Grafana's dashboard sidecar (label grafana_dashboard=1)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "monitoring" / "dashboard.json"
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "monitoring"
TARGET = COMPONENT / "prometheusrule.yaml"
DASHBOARD_TARGET = COMPONENT / "grafana-dashboard.yaml"
HEADER = (
    "# The alerting rules of deploy/monitoring/alerts.yml for the Prometheus Operator (the same\n"
    "# groups: tests/deploy/test_monitoring.py checks they stay equal). Regenerate with\n"
    "# `make monitoring-rules` after changing alerts.yml.\n"
)


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "clientpress", "labels": {"app.kubernetes.io/name": "clientpress"}},
        "spec": {"groups": yaml.safe_load(RULES.read_text())["groups"]},
    }


DASHBOARD_HEADER = (
    "# deploy/monitoring/dashboard.json as a ConfigMap for Grafana's dashboard sidecar (it\n"
    "# loads ConfigMaps labelled grafana_dashboard=1). Regenerate with `make monitoring-rules`.\n"
)


def dashboard_config_map() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "clientpress-grafana-dashboard",
            "labels": {"app.kubernetes.io/name": "clientpress", "grafana_dashboard": "1"},
        },
        "data": {"clientpress.json": DASHBOARD.read_text()},
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the dashboard's JSON) as readable `|` blocks."""


def _block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _block)


def rendered() -> dict[Path, str]:
    return {
        TARGET: HEADER + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=100),
        DASHBOARD_TARGET: DASHBOARD_HEADER
        + yaml.dump(dashboard_config_map(), Dumper=_BlockDumper, sort_keys=False, width=100),
    }


def main() -> int:
    for path, text in rendered().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
