"""Prometheus metrics shared by every service (the official prometheus-client)."""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# Every counter and histogram series would carry a `_created` twin (the time it was first
# seen), which no rule or panel of ours reads: twice the series for each counter in
# Prometheus's memory and in every scrape. The alerts tell a pod's new series by
# process_start_time_seconds instead.
disable_created_metrics()  # type: ignore[no-untyped-call]

HTTP_REQUESTS = Counter(
    "clientpress_http_requests_total", "HTTP requests by route", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "clientpress_http_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HTTP_REFUSED = Counter(
    "clientpress_http_refused_total",
    "Requests refused under the routes: malformed (aiohttp's parser), body_timeout (a body"
    " slower than HTTP_BODY_TIMEOUT_SECONDS)",
    ["reason"],
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
EVENTS_UNROUTABLE = Counter(
    "clientpress_events_unroutable_total",
    "Mandatory events the broker returned (no queue bound); they stay in the outbox",
    ["type"],
)
EVENTS_REFUSED = Counter(
    "clientpress_events_refused_total",
    "Events the broker nacked (a queue they go to is full: the installation's queue"
    " limits); they stay in the outbox and are tried again",
    ["type"],
)
DEAD_LETTERS_WAITING = Gauge(
    "clientpress_dead_letters_waiting",
    "Messages in the service's dead-letter queue (<prefix>.<service>.dead), whoever put"
    " them there: the service, the delivery limit, an expiry or a full queue",
    ["queue"],
)
BROKER_CONNECTED = Gauge(
    "clientpress_broker_connected",
    "1 while the AMQP connection is up; 0 while it is away and reconnecting",
)
BROKER_BLOCKED = Gauge(
    "clientpress_broker_blocked",
    "1 while RabbitMQ blocks the AMQP connection (a memory or disk alarm): nothing is"
    " published or acknowledged until it clears; the outbox keeps the events",
)
CONSUMER_CANCELLED = Gauge(
    "clientpress_consumer_cancelled",
    "1 while the broker has cancelled the service's consumer of the queue (its queue"
    " deleted) and it does not consume again yet",
    ["queue"],
)
ROWS_PRUNED = Counter(
    "clientpress_rows_pruned_total",
    "Rows deleted once past their retention (libs/common/retention.py)",
    ["table"],
)
BUILD_INFO = Gauge(
    "clientpress_build_info",
    "Always 1: which release, service and Python this process runs",
    ["version", "service", "python"],
)


def release() -> str:
    """The installed ClientPress version (pyproject.toml's), or "unknown" from a bare tree."""
    try:
        return metadata.version("clientpress")
    except metadata.PackageNotFoundError:
        return "unknown"


def record_build_info(service: str) -> None:
    BUILD_INFO.labels(release(), service, platform.python_version()).set(1)
