"""OpenTelemetry traces, on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; off, nothing here
does more than test a flag, and the SDK is never imported.

The spans are made by this module's small glue rather than by the opentelemetry-instrumentation
packages (whose current releases pin an older opentelemetry-api than the SDK we pin): the
server span in the request middleware (libs/common/web.py), the client span and the W3C
headers in ServiceClient (libs/common/http.py), a span per query for the connections of the
pools (asyncpg's query logger), and the producer and consumer spans with the context in
the AMQP message headers (libs/common/bus.py).

Work that waits in a table before it goes on keeps its context beside it: an outbox row
keeps the context of the request or message that wrote it (``carrier``), and the relay
publishes it inside that context (``resumed``); a mail delivery keeps it too, so the SMTP
send, however much later, closes the trace of the API call that asked for it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import asyncpg
import orjson
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .logging import get_logger
from .metrics import release

log = get_logger(__name__)

_tracer = trace.get_tracer("clientpress")
_enabled = False


def enabled() -> bool:
    return _enabled


def carrier() -> str | None:
    """The current trace context, as the W3C headers in JSON, to store beside work that
    goes on later (an outbox row, a delivery); None when nothing is being traced."""
    if not _enabled:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return orjson.dumps(headers).decode() if headers else None


@contextlib.contextmanager
def resumed(stored: str | None) -> Iterator[None]:
    """Continue the trace a ``carrier`` stored (nothing to do without one)."""
    if not stored or not _enabled:
        yield
        return
    try:
        headers = orjson.loads(stored)
    except orjson.JSONDecodeError:
        headers = {}
    token = context.attach(propagate.extract(headers if isinstance(headers, dict) else {}))
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int] | None = None,
    *,
    incoming: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span | None]:
    """A span, child of the current context, or of the context in ``incoming`` (the
    headers of a request or a message); None when traces are off."""
    if not _enabled:
        yield None
        return
    parent = None
    if incoming is not None:
        parent = propagate.extract(
            {
                # HTTP header names are case-insensitive; the propagator asks in lower case.
                k.lower(): v.decode(errors="replace") if isinstance(v, bytes) else v
                for k, v in incoming.items()
                if isinstance(v, str | bytes)
            }
        )
    with _tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=dict(attributes or {})
    ) as current:
        yield current


def outgoing(headers: MutableMapping[str, Any]) -> None:
    """Add the current context's W3C headers (an HTTP call, an AMQP message)."""
    if _enabled:
        propagate.inject(headers)


def failed(current: trace.Span | None, description: str) -> None:
    if current is not None:
        current.set_status(Status(StatusCode.ERROR, description))


async def watch_queries(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """A pool's ``init``: each query made inside a traced request or message becomes a
    span (queries outside any, like the relay's polling, make none)."""
    conn.add_query_logger(_query_span)


def _query_span(record: Any) -> None:
    # Called soon after the query, in a copy of the querying task's context: the parent
    # is still the span that made the query.
    if not trace.get_current_span().is_recording():
        return
    statement = str(record.query).lstrip()
    operation = statement.split(None, 1)[0].upper() if statement else "QUERY"
    end = time.time_ns()
    current = _tracer.start_span(
        f"postgresql {operation}",
        kind=SpanKind.CLIENT,
        start_time=end - int(record.elapsed * 1e9),
        # The statement only: the arguments may hold an address or a token's hash.
        attributes={"db.system.name": "postgresql", "db.query.text": statement[:1000]},
    )
    if record.exception is not None:
        current.set_status(Status(StatusCode.ERROR, type(record.exception).__name__))
    current.end(end_time=end)


def configure_tracing(
    service: str, endpoint: str | None, *, exporter: Any = None
) -> Callable[[], None] | None:
    """Set up the tracer provider when ``endpoint`` is set (or an ``exporter`` is given,
    as the tests do). Returns what flushes and stops it at shutdown; None when off."""
    global _enabled, _tracer
    if not endpoint and exporter is None:
        return None
    # Imported here: a service without an endpoint never loads the SDK.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces)
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": f"clientpress-{service}",
                "service.namespace": "clientpress",
                "service.version": release(),
            }
        )
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("clientpress", release())
    _enabled = True
    log.info("tracing_enabled", endpoint=endpoint or "custom exporter")
    return provider.shutdown
