"""Traces (issue 18), piece by piece on the real PostgreSQL and RabbitMQ: the outbox row
keeps its writer's context, the relay publishes inside it with traceparent in the
message headers, the consumer continues it, queries inside make spans and queries
outside make none. And off (no endpoint): no context stored, the SDK never loaded.
tests/e2e/test_traces.py follows one API call through the whole stack."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from libs.common import tracing
from libs.common.bus import Binding, Bus
from libs.common.db import Conn, create_pool, migrate
from libs.common.events import Envelope, EventData, UserDisabled, make_event
from libs.common.outbox import OutboxRelay, append
from libs.common.web import base_app, management_app
from tests.support.env import TestEnv

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Traces on for this test only, into memory (the process-wide provider untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_enabled", True)
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


@pytest.fixture
async def schema_pool(
    test_env: TestEnv, tmp_path: Path, exported: object
) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    schema = f"trace_{uuid.uuid4().hex[:8]}"
    await migrate(test_env.database_url, schema, tmp_path)
    pool = await create_pool(test_env.database_url, schema)  # traced: made with traces on
    yield schema, pool
    await pool.close()


def _named(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


@pytest.mark.integration
async def test_outbox_relay_and_consumer_carry_the_writers_trace(
    test_env: TestEnv, schema_pool: tuple[str, asyncpg.Pool], exported: InMemorySpanExporter
) -> None:
    schema, pool = schema_pool
    applied: asyncio.Queue[str] = asyncio.Queue()

    async def handler(conn: Conn, envelope: Envelope, data: EventData) -> None:
        await applied.put(str(envelope.id))

    owner = Bus(test_env.amqp_url_as("identity"), test_env.bus_prefix, "identity")
    await owner.connect()
    listener = Bus(test_env.amqp_url, test_env.bus_prefix, "probe3")
    await listener.connect()
    consumer = await listener.consume(
        pool,
        [Binding("events", "identity.user.disabled")],
        {"identity.user.disabled": handler},
    )
    relay = OutboxRelay(pool, owner, schema, test_env.database_url)
    envelope = make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="t")
    with tracing.span("POST /things", SpanKind.SERVER) as request:
        assert request is not None
        async with pool.acquire() as conn, conn.transaction():
            await append(conn, envelope)
    trace_id = request.get_span_context().trace_id
    stored = await pool.fetchval("SELECT trace_context FROM outbox")
    assert f"{trace_id:032x}" in stored and "traceparent" in stored

    # The relay runs later, in no request: its publish still belongs to the writer's trace.
    assert await relay.flush_once() == 1
    assert await asyncio.wait_for(applied.get(), 10) == str(envelope.id)
    for _ in range(100):
        if _named(exported.get_finished_spans(), "process "):
            break
        await asyncio.sleep(0.05)
    spans = exported.get_finished_spans()
    (publish,) = _named(spans, "publish identity.user.disabled")
    (process,) = _named(spans, "process identity.user.disabled")
    assert publish.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert publish.context.trace_id == trace_id == process.context.trace_id
    assert (
        publish.parent is not None and publish.parent.span_id == request.get_span_context().span_id
    )
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert publish.attributes["messaging.message.id"] == str(envelope.id)
    # The query inside the request is a span of it, statement only; the relay's own
    # queries (claim, mark published) ran in no trace and made none.
    queries = _named(spans, "postgresql ")
    assert queries and all(q.context.trace_id == trace_id for q in queries)
    assert any("INSERT INTO outbox" in str(q.attributes["db.query.text"]) for q in queries)
    assert not any("published_at = now()" in str(q.attributes["db.query.text"]) for q in queries)
    await consumer.stop()
    await listener.close()
    await owner.close()


@pytest.mark.integration
async def test_a_message_without_trace_headers_starts_nothing_broken(
    test_env: TestEnv, exported: InMemorySpanExporter
) -> None:
    # A message from an integration (no traceparent) is consumed as the root of a trace.
    bus = Bus(test_env.amqp_url_as("identity"), test_env.bus_prefix, "identity")
    await bus.connect()
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(bus.exchange_name("events"), routing_key="identity.user.disabled")
    await bus.publish_envelope(
        make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="t")
    )
    message = await queue.get(timeout=5)
    assert message is not None
    (publish,) = _named(exported.get_finished_spans(), "publish ")
    assert publish.parent is None
    traceparent = (message.headers or {})["traceparent"]
    assert f"{publish.context.trace_id:032x}" in str(traceparent)
    await message.ack()
    await connection.close()
    await bus.close()


def test_off_no_context_is_kept_and_the_sdk_is_never_loaded() -> None:
    assert not tracing.enabled()
    assert tracing.carrier() is None
    with tracing.span("anything") as span:
        assert span is None
    script = (
        "import sys\n"
        "from libs.common.runner import main\n"
        "from libs.common.tracing import configure_tracing\n"
        "from services.gateway.app import create_app\n"
        "from services.gateway.settings import GatewaySettings\n"
        "assert configure_tracing('gateway', None) is None\n"
        "create_app(GatewaySettings(public_url='http://127.0.0.1:9'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


async def test_the_server_span_continues_the_callers_trace_and_skips_probes(
    exported: InMemorySpanExporter,
) -> None:
    async def thing(request: web.Request) -> web.Response:
        return web.json_response({})

    app = base_app("portals")
    app.router.add_get("/things/{id}", thing)
    trace_id, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with TestClient(TestServer(app)) as client:
        # Header names in any case (HTTP's are case-insensitive).
        headers = {"TraceParent": f"00-{trace_id}-{caller}-01"}
        assert (await client.get("/things/1", headers=headers)).status == 200
    async with TestClient(TestServer(management_app(app))) as management:
        assert (await management.get("/healthz")).status == 200
    (server,) = exported.get_finished_spans()
    assert server.name == "GET /things/{id}" and server.kind == SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == trace_id
    assert server.parent is not None and f"{server.parent.span_id:016x}" == caller
    assert server.attributes["http.response.status_code"] == 200
