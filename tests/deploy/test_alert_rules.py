"""The alerting rules against Prometheus itself: `promtool check rules` parses them, and
`promtool test rules` feeds each alert the series it is about (tests/deploy/alerts_test.yml)
and checks that it fires (labels, summary), waits its `for:`, and stays quiet when it
should. .ci/run installs promtool (Debian's `prometheus`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_on_its_series_and_only_then(tmp_path: Path) -> None:
    every = rules()
    suite = yaml.safe_load(UNIT_TESTS.read_text())
    fired = set()
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            rule = every[check["alertname"]]
            for alert in check["exp_alerts"]:
                fired.add(check["alertname"])
                # The descriptions are plain text (no template): the tests name only the
                # summaries, which hold the labels and values.
                description = rule["annotations"]["description"]
                assert "{{" not in description, check["alertname"]
                alert["exp_annotations"].setdefault("description", description)
    assert fired == set(every), f"alerts no test sees firing: {set(every) - fired}"
    suite["rule_files"] = [str(ALERTS)]
    written = tmp_path / "alerts_test.yml"
    written.write_text(yaml.safe_dump(suite, sort_keys=False))
    tested = promtool("test", "rules", str(written))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rules_outside_clientpress_metrics_are_exported_too() -> None:
    """ClientPressDeadLetters and ClientPressMailFailures read process_start_time_seconds,
    which /metrics has from prometheus-client's process collector (the default registry,
    on Linux); `up` is Prometheus's own."""
    text = ALERTS.read_text()
    assert "process_start_time_seconds" in text
    assert REGISTRY.get_sample_value("process_start_time_seconds"), "no process collector"


def test_docs_list_every_alert() -> None:
    """docs/observability.md's table of alerts names each rule, and nothing else."""
    text = (ROOT / "docs" / "observability.md").read_text()
    listed = set(re.findall(r"^\s*\| `(ClientPress[A-Za-z0-9]+)` \|", text, re.M))
    assert listed == set(rules())
