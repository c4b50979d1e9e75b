"""Smoke test of the benchmark harness: a tiny `python -m bench list --quick` run against a
stack it starts itself prints valid JSON lines with the expected keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e]


def test_quick_list_benchmark_prints_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "list", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert all({"bench", "case"} <= set(line) for line in lines)
    by_case = {(line["bench"], line["case"]): line for line in lines}
    assert by_case[("meta", "run")]["quick"] is True
    for case in ("first_page", "deep_page", "filtered_page", "filtered_deep_page"):
        result = by_case[("list", case)]
        assert result["items"] == 50
        assert 0 < result["p50_ms"] <= result["p95_ms"]
    assert by_case[("list", "email_search")]["items"] == 1
    rss = [line for line in lines if line["bench"] == "rss"]
    assert {line["case"] for line in rss} == {
        "identity",
        "portals",
        "invitations",
        "mailer",
        "gateway",
    }
    assert all(line["peak_mib"] > 0 for line in rss)
    assert json.loads(out.read_text()) == lines


def _lines_of(module: str) -> list[dict[str, object]]:
    """What ``python -m <module>`` (a benchmark without a stack) prints: JSON lines."""
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_trust_costs_print_json_lines() -> None:
    cases = {line["case"]: line["us_per_call"] for line in _lines_of("bench.trust")}
    assert set(cases) >= {"seal_mail_job", "open_mail_job", "sender_check", "service_token_verify"}
    assert all(isinstance(value, float) and value > 0 for value in cases.values())


def test_log_line_costs_print_json_lines_and_nothing_else() -> None:
    # The lines it measures go to /dev/null: only its results reach stdout.
    lines = _lines_of("bench.logs")
    assert {line["bench"] for line in lines} == {"logs"}
    cases = {line["case"]: line for line in lines}
    assert set(cases) == {"access_line", "event_line", "filtered_debug_line"}
    assert all(0 < line["us_per_line"] <= line["median_us"] for line in lines)  # type: ignore[operator]
