"""mail.requested version 2: a batch's mail jobs in one message. Each job is recorded
and sent as if it had come alone; a job that can't be recorded fails alone."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from libs.common.bus import Bus
from libs.common.events import MailJobs, make_event
from tests.mailer.conftest import (
    StartMailer,
    invitation_job,
    outbox_events,
    publish_job,
    publish_jobs,
    sealed,
    wait_for_row,
)
from tests.support.smtp import SmtpSink, accept_link

pytestmark = pytest.mark.integration

PoolFactory = Callable[[str], Any]


def _address(tag: str = "many") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture
async def pool(
    start_mailer: StartMailer, smtp_sink: SmtpSink, pool_factory: PoolFactory
) -> asyncpg.Pool:
    """The mailer's tables, with a mailer running that sends to ``smtp_sink``."""
    await start_mailer(smtp_sink.port)
    mailer_pool: asyncpg.Pool = await pool_factory("mailer")
    return mailer_pool


async def test_each_job_of_one_message_is_sent_once_with_its_own_link(
    pool: asyncpg.Pool, publisher: Bus, smtp_sink: SmtpSink
) -> None:
    made = [invitation_job(_address()) for _ in range(25)]
    jobs = [job for job, _ in made]
    envelope = await publish_jobs(publisher, jobs)
    # The very same message again, and one of its jobs again on its own: nothing twice.
    await publisher.publish_envelope(envelope, kind="mail")
    await publish_job(publisher, jobs[3])

    for job, token in made:
        [msg] = await smtp_sink.sink.wait_for(job.to)
        assert accept_link(msg).endswith(f"token={token}")
        await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
        [sent] = await outbox_events(pool, job.mail_id)
        assert sent["type"] == "mail.sent" and sent["data"]["ref_id"] == str(job.ref_id)
        assert token.encode() not in sent["raw"]
    for job, _ in made:
        assert len(smtp_sink.sink.to(job.to)) == 1


async def test_a_bad_job_fails_alone_and_its_neighbours_are_sent(
    pool: asyncpg.Pool, publisher: Bus, smtp_sink: SmtpSink
) -> None:
    good = [invitation_job(_address())[0] for _ in range(3)]
    header_injection = invitation_job("victim@example.com\r\nBcc: attacker@example.net")[0]
    # A NUL can't be stored in a text column: the statement for all of them fails, and
    # the jobs are then recorded one by one.
    unstorable = invitation_job(_address("nul"))[0].model_copy(update={"ref_type": "invi\x00te"})
    await publish_jobs(publisher, [good[0], header_injection, good[1], unstorable, good[2]])

    for job in good:
        await smtp_sink.sink.wait_for(job.to)
        await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
    refused = await wait_for_row(pool, header_injection.mail_id, lambda r: True)
    assert refused["status"] == "failed" and refused["context"] is None
    [event] = await outbox_events(pool, header_injection.mail_id)
    assert event["data"]["reason"] == "invalid_address"
    stored = await wait_for_row(pool, unstorable.mail_id, lambda r: True)
    assert stored["status"] == "failed" and stored["context"] is None
    assert stored["ref_type"] == "invite"
    [event] = await outbox_events(pool, unstorable.mail_id)
    assert event["type"] == "mail.failed" and event["data"]["reason"] == "invalid_context"
    assert not smtp_sink.sink.to("attacker@example.net")


async def test_each_job_of_a_packed_message_keeps_its_own_correlation_id_and_trace(
    pool: asyncpg.Pool, publisher: Bus, smtp_sink: SmtpSink
) -> None:
    """The single jobs an outbox relay packs into one message each carry the correlation
    id and the trace of the request that asked for them; a job without its own takes the
    message's."""
    own, plain = invitation_job(_address("own"))[0], invitation_job(_address("plain"))[0]
    trace = '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'
    own = own.model_copy(update={"correlation_id": "request-of-own", "trace_context": trace})
    envelope = make_event(
        "mail.requested",
        MailJobs(jobs=[sealed(own), sealed(plain)]),
        source="invitations",
        correlation_id="the-message",
    )
    await publisher.publish_envelope(envelope, kind="mail")

    for job, correlation_id, trace_context in (
        (own, "request-of-own", trace),
        (plain, "the-message", None),
    ):
        await smtp_sink.sink.wait_for(job.to)
        row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
        assert row["correlation_id"] == correlation_id
        if trace_context is not None:
            assert row["trace_context"] == trace_context
        [sent] = await outbox_events(pool, job.mail_id)
        assert sent["type"] == "mail.sent" and sent["correlation_id"] == correlation_id
