"""Traces (issue 18): with OTEL_EXPORTER_OTLP_ENDPOINT set, one API call that invites a
client makes one trace, from the gateway's request through invitations, its outbox, the
broker, the mailer's consumer and its deliveries table, to the SMTP send. The spans are
received in memory by an OTLP/HTTP receiver in this process (tests/support/otlp.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.e2e.flows import eventually, unique_email
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.smtp import SmtpSink
from tests.support.stack import API_KEY, Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP's SpanKind numbers


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    await otlp.start()
    yield otlp
    await otlp.close()


@pytest.fixture(scope="module")
async def traced(receiver: OtlpReceiver, stack_sink: SmtpSink) -> AsyncIterator[Stack]:
    async with running_stack(
        stack_sink,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        # Export every 100 ms rather than every 5 s: the test polls for the spans.
        OTEL_BSP_SCHEDULE_DELAY="100",
    ) as stack:
        yield stack


async def test_one_trace_from_the_api_call_to_the_smtp_send(
    traced: Stack, receiver: OtlpReceiver
) -> None:
    trace_id = secrets.token_hex(16)
    caller_span = secrets.token_hex(8)
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "traceparent": f"00-{trace_id}-{caller_span}-01",
    }
    email = unique_email("traced")
    async with aiohttp.ClientSession(headers=headers) as session:
        base = traced.public_url + "/api/v1"
        async with session.post(
            base + "/portals", json={"title": "Traced", "status": "active"}
        ) as response:
            assert response.status == 201
            portal = await response.json()
        async with session.post(
            base + f"/portals/{portal['id']}/invitations", json={"email": email}
        ) as response:
            assert response.status == 201, await response.text()
    await traced.sink.wait_for(email)

    async def smtp_send() -> ReceivedSpan | None:
        sent = [s for s in receiver.trace(trace_id) if s.name == "smtp send"]
        return sent[0] if sent else None

    send = await eventually(smtp_send, "the SMTP send's span in the API call's trace")
    spans = receiver.trace(trace_id)
    by_id = {s.span_id: s for s in spans}

    # The SMTP send descends, span by span, from the gateway's request span, which is the
    # child of the caller's span: one unbroken chain, no second trace on the way.
    chain = [send]
    while chain[-1].parent_span_id != caller_span:
        parent = by_id.get(chain[-1].parent_span_id)
        assert parent is not None, f"broken chain at {chain[-1]}"
        chain.append(parent)
    route = [(s.service.removeprefix("clientpress-"), s.kind) for s in reversed(chain)]
    assert route[0] == ("gateway", SERVER)
    assert ("invitations", SERVER) in route
    assert ("invitations", PRODUCER) in route  # the outbox relay, in the request's trace
    assert ("mailer", CONSUMER) in route  # the mail job, across the broker
    assert route[-1] == ("mailer", CLIENT)
    assert send.attributes["mail.template"]
    # The queries of the request are in it, without their arguments.
    queries = [s for s in spans if s.name.startswith("postgresql ")]
    assert any(s.service == "clientpress-invitations" for s in queries)
    assert all(email not in str(s.attributes) for s in spans)
    # The public event goes on in the same trace too (invitation.created to its consumers).
    assert any(
        s.kind == PRODUCER
        and s.attributes.get("messaging.rabbitmq.destination.routing_key") == "invitation.created"
        for s in spans
    )
