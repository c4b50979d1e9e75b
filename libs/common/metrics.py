"""Prometheus metrics shared by every service (the official prometheus-client)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "clientpress_http_requests_total", "HTTP requests by route", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "clientpress_http_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_PUBLISHED = Counter(
    "clientpress_events_published_total", "Events published by the outbox relay", ["type"]
)
EVENTS_CONSUMED = Counter(
    "clientpress_events_consumed_total", "Events consumed, by outcome", ["type", "outcome"]
)
EVENTS_DEAD_LETTERED = Counter(
    "clientpress_events_dead_lettered_total",
    "Messages sent to the dead-letter queue",
    ["type", "reason"],
)
OUTBOX_BACKLOG = Gauge("clientpress_outbox_backlog", "Outbox rows not yet published")
