"""What a service's /metrics exports: no `_created` twin per counter and histogram series
(prometheus-client adds one by default), which no alert or panel reads and which doubled
the series of every counter."""

from __future__ import annotations

from prometheus_client import generate_latest

from libs.common.metrics import EVENTS_CONSUMED, HTTP_LATENCY


def test_counters_and_histograms_export_no_created_series() -> None:
    EVENTS_CONSUMED.labels("test.metrics", "ok").inc()
    HTTP_LATENCY.labels("GET", "/test-metrics").observe(0.01)
    exported = generate_latest().decode()
    assert 'clientpress_events_consumed_total{outcome="ok",type="test.metrics"} ' in exported
    names = {line.split("{")[0].split(" ")[0] for line in exported.splitlines() if line[:1] != "#"}
    assert not {name for name in names if name.endswith("_created")}
