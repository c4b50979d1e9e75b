"""The mailer end to end inside one process: real mail exchange → deliveries table →
real SMTP server, with retries, permanent failures and the events they announce."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from prometheus_client import REGISTRY

from libs.common.bus import Bus
from tests.mailer.conftest import (
    StartMailer,
    invitation_job,
    outbox_events,
    publish_invitation,
    publish_job,
    wait_for_row,
)
from tests.support.env import free_port
from tests.support.management import management_client
from tests.support.smtp import Sink, SmtpSink, accept_link, html_part, text_part

pytestmark = pytest.mark.integration


def _address() -> str:
    return f"client-{uuid.uuid4().hex[:8]}@example.com"


class Counts(NamedTuple):
    sent: float
    retried: float
    failed: float

    def since(self, before: Counts) -> Counts:
        return Counts(*(now - then for now, then in zip(self, before, strict=True)))


def email_counts(template: str = "invitation") -> Counts:
    """The mailer's counters for ``template`` in this process's registry (0 before the
    first: a labelled counter appears with its first increment)."""

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"template": template}) or 0.0

    return Counts(
        value("clientpress_emails_sent_total"),
        value("clientpress_emails_retried_total"),
        value("clientpress_emails_failed_total"),
    )


async def counted(before: Counts, expected: Counts) -> None:
    """Wait for the counters to have moved by ``expected`` since ``before``: the mailer
    counts an outcome just after recording it, so the row may show it first."""
    for _ in range(400):
        if email_counts().since(before) == expected:
            return
        await asyncio.sleep(0.05)
    assert email_counts().since(before) == expected


def smtp_sends(outcome: str) -> float:
    """How many SMTP sends the mailer timed that ended in ``outcome``."""
    name = "clientpress_smtp_send_duration_seconds_count"
    return REGISTRY.get_sample_value(name, {"outcome": outcome}) or 0.0


async def test_a_mail_job_on_the_mail_exchange_arrives_with_both_parts(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    client = await start_mailer(smtp_sink.port)
    job, token = await publish_invitation(publisher)
    to = job.to

    [msg] = await smtp_sink.sink.wait_for(to)
    assert msg["Subject"] == "You're invited to Acme Rebrand on Northwind Agency"
    assert accept_link(msg) == job.context["accept_url"]
    assert "Accept Invitation</a>" in html_part(msg)
    assert job.context["accept_url"] in text_part(msg)

    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
    assert row["context"] is None, "the link is forgotten once sent"
    assert row["attempts"] == 1 and row["sent_at"] is not None
    [event] = await outbox_events(pool, job.mail_id)
    assert event["type"] == "mail.sent" and event["exchange"] == "events"
    assert event["data"]["ref_id"] == str(job.ref_id)
    assert token.encode() not in event["raw"]

    async with management_client(client.app) as management:
        metrics = await (await management.get("/metrics")).text()
    assert 'clientpress_emails_sent_total{template="invitation"}' in metrics
    assert "clientpress_emails_queued" in metrics


async def test_the_same_job_delivered_twice_sends_one_email(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    await start_mailer(smtp_sink.port)
    to = _address()
    job, _ = invitation_job(to)
    envelope = await publish_job(publisher, job)
    await publisher.publish_envelope(envelope, kind="mail")  # the very same message again
    await publish_job(publisher, job)  # the same job republished under a new event id

    await smtp_sink.sink.wait_for(to)
    await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
    await asyncio.sleep(0.5)
    assert len(smtp_sink.sink.to(to)) == 1
    assert [e["type"] for e in await outbox_events(pool, job.mail_id)] == ["mail.sent"]


async def test_smtp_down_then_up_the_email_still_arrives(
    start_mailer: StartMailer, publisher: Bus, pool: asyncpg.Pool
) -> None:
    port = free_port()  # nothing listens here yet
    await start_mailer(port)
    job, _ = await publish_invitation(publisher)
    to = job.to

    row = await wait_for_row(pool, job.mail_id, lambda r: r["attempts"] >= 2)
    assert row["last_error"] and job.context["accept_url"] not in row["last_error"]

    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        [msg] = await sink.wait_for(to)
        assert accept_link(msg) == job.context["accept_url"]
        row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
        assert row["context"] is None
    finally:
        controller.stop()


async def test_a_4xx_answer_is_retried_then_succeeds(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    smtp_sink.sink.fail_with = "451 4.3.0 try later"
    await start_mailer(smtp_sink.port)
    before = email_counts()
    before_sends = {outcome: smtp_sends(outcome) for outcome in ("retry", "sent")}
    job, _ = await publish_invitation(publisher)
    to = job.to

    row = await wait_for_row(pool, job.mail_id, lambda r: r["attempts"] >= 2)
    assert row["last_error"].startswith("451")
    smtp_sink.sink.fail_with = None

    await smtp_sink.sink.wait_for(to)
    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
    assert row["attempts"] >= 2 and row["last_error"] is None
    types = [e["type"] for e in await outbox_events(pool, job.mail_id)]
    assert types == ["mail.retrying"] * (row["attempts"] - 1) + ["mail.sent"]
    # What ClientPressMailRetrying reads, one per retry, and the send.
    await counted(before, Counts(sent=1, retried=row["attempts"] - 1, failed=0))
    # Each try is timed, by how it ended: the refusals and the send.
    assert smtp_sends("retry") - before_sends["retry"] == row["attempts"] - 1
    assert smtp_sends("sent") - before_sends["sent"] == 1


async def test_an_answer_with_a_nul_byte_is_recorded_and_retried_not_stuck(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    """PostgreSQL takes no NUL in text: a server's reply with one used to make the retry
    fail to record, leaving the mail 'sending' until the stuck-send sweep."""
    smtp_sink.sink.fail_with = "451 4.3.0 try\x00 later\x1b[31m"
    await start_mailer(smtp_sink.port)
    job, _ = await publish_invitation(publisher)
    to = job.to

    row = await wait_for_row(pool, job.mail_id, lambda r: r["attempts"] >= 2, timeout=10)
    assert row["last_error"] == "451 4.3.0 try later [31m"
    smtp_sink.sink.fail_with = None
    await smtp_sink.sink.wait_for(to)


async def test_a_5xx_answer_fails_after_one_attempt(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    smtp_sink.sink.fail_with = "550 5.1.1 no such user"
    await start_mailer(smtp_sink.port)
    before = email_counts()
    failed_sends = smtp_sends("failed")
    job, token = await publish_invitation(publisher)
    to = job.to

    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "failed")
    # What ClientPressMailFailures reads.
    await counted(before, Counts(sent=0, retried=0, failed=1))
    assert smtp_sends("failed") - failed_sends == 1
    assert row["attempts"] == 1 and row["context"] is None
    assert row["last_error"].startswith("550")
    [event] = await outbox_events(pool, job.mail_id)
    assert event["type"] == "mail.failed" and event["exchange"] == "events"
    assert event["data"]["reason"] == "smtp_rejected" and event["data"]["attempts"] == 1
    assert token.encode() not in event["raw"]
    assert smtp_sink.sink.to(to) == []


async def test_a_server_quoting_the_link_leaves_it_nowhere(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    """A filter's rejection may quote what it refused: the link, or its token alone,
    percent-encoded or not. The server's words went into ``last_error`` (the Invitations
    screen's delivery error), the log line and the public mail.retrying / mail.failed,
    where any program reading the lifecycle took a live link from it."""
    job, token = invitation_job(_address())
    link = job.context["accept_url"]
    smtp_sink.sink.fail_with = f"451 4.7.1 greylisted {link} ({quote(link, safe='')}) try later"
    await start_mailer(smtp_sink.port)
    await publish_job(publisher, job)

    row = await wait_for_row(pool, job.mail_id, lambda r: r["last_error"] is not None)
    assert token not in row["last_error"], row["last_error"]
    assert row["last_error"].startswith("451 4.7.1 greylisted [link] ([link])")
    smtp_sink.sink.fail_with = f"550 5.7.1 blocked by policy: token {token}"
    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "failed", timeout=30)
    assert row["last_error"] == "550 5.7.1 blocked by policy: token [link]"
    events = await outbox_events(pool, job.mail_id)
    assert {e["type"] for e in events} == {"mail.retrying", "mail.failed"}
    for event in events:
        assert token.encode() not in event["raw"], event["type"]


async def test_an_outage_longer_than_eight_tries_keeps_retrying_then_delivers(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    """Eight tries used to be the end (2-4 minutes with the shipped settings); now the
    horizon decides, and each deferred try is announced with its next try time."""
    smtp_sink.sink.fail_with = "451 4.3.0 try later"
    await start_mailer(
        smtp_sink.port, mailer_retry_max_seconds=0.2, mailer_give_up_after_seconds=600
    )
    job, token = await publish_invitation(publisher)
    to = job.to

    row = await wait_for_row(
        pool, job.mail_id, lambda r: r["attempts"] >= 12 or r["status"] == "failed", timeout=40
    )
    assert row["status"] in ("queued", "sending"), "still trying after twelve refusals"
    retrying = [e for e in await outbox_events(pool, job.mail_id) if e["type"] == "mail.retrying"]
    assert len(retrying) >= 11
    assert all(e["exchange"] == "events" and token.encode() not in e["raw"] for e in retrying)
    assert [e["data"]["attempt"] for e in retrying] == list(range(1, len(retrying) + 1))
    last = retrying[-1]["data"]
    assert last["ref_id"] == str(job.ref_id) and last["ref_type"] == "invitation"
    assert last["reason"] == "smtp_deferred" and last["smtp_code"] == 451
    when = [datetime.fromisoformat(e["data"]["next_attempt_at"]) for e in retrying]
    assert when == sorted(when)

    smtp_sink.sink.fail_with = None
    await smtp_sink.sink.wait_for(to)
    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
    assert row["attempts"] >= 12 and row["context"] is None
    types = [e["type"] for e in await outbox_events(pool, job.mail_id)]
    assert types[-1] == "mail.sent" and "mail.failed" not in types
    assert len(smtp_sink.sink.to(to)) == 1


async def test_a_job_past_its_horizon_fails_for_good(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    """Virtual hours: the job's queueing time is moved back, the rest runs for real with
    the shipped two-day horizon."""
    smtp_sink.sink.fail_with = "421 4.7.0 too busy"
    await start_mailer(smtp_sink.port, mailer_retry_max_seconds=0.2)
    job, _ = await publish_invitation(publisher)
    await wait_for_row(pool, job.mail_id, lambda r: r["attempts"] >= 2)

    # Queued 47 hours ago: still inside the horizon, so it keeps trying.
    await pool.execute(
        "UPDATE deliveries SET created_at = now() - interval '47 hours' WHERE mail_id = $1",
        job.mail_id,
    )
    seen = await pool.fetchval("SELECT attempts FROM deliveries WHERE mail_id = $1", job.mail_id)
    row = await wait_for_row(pool, job.mail_id, lambda r: r["attempts"] >= seen + 3)
    assert row["status"] in ("queued", "sending")

    # A second before the horizon's end: no try is planned past it, and the refusal of
    # the last one is final.
    queued_at = await pool.fetchval(
        "UPDATE deliveries SET created_at = now() - interval '48 hours' + interval '1 second'"
        " WHERE mail_id = $1 RETURNING created_at",
        job.mail_id,
    )
    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "failed")
    assert row["context"] is None and row["last_error"].startswith("421")
    events = await outbox_events(pool, job.mail_id)
    assert events[-1]["type"] == "mail.failed"
    assert events[-1]["data"]["reason"] == "max_attempts"
    assert events[-1]["data"]["attempts"] == row["attempts"]
    assert [e["type"] for e in events].count("mail.failed") == 1
    horizon_end = queued_at + timedelta(hours=48)
    planned = [datetime.fromisoformat(e["data"]["next_attempt_at"]) for e in events[-4:-1]]
    assert all(when <= horizon_end for when in planned), (planned, horizon_end)


async def test_a_recipient_with_a_line_break_is_refused_not_sent(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    await start_mailer(smtp_sink.port)
    job, _ = await publish_invitation(publisher, "victim@example.com\r\nBcc: attacker@example.net")

    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "failed")
    assert row["context"] is None and row["attempts"] == 0
    assert "\n" not in row["to_address"]
    [event] = await outbox_events(pool, job.mail_id)
    assert event["data"]["reason"] == "invalid_address"
    assert smtp_sink.sink.messages == [] or not smtp_sink.sink.to("attacker@example.net")


async def test_a_job_missing_its_link_fails_as_invalid_context(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
) -> None:
    await start_mailer(smtp_sink.port)
    job, _ = await publish_invitation(publisher, accept_url="")

    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "failed")
    [event] = await outbox_events(pool, job.mail_id)
    assert event["data"]["reason"] == "invalid_context"
    assert row["context"] is None


async def test_a_dead_smtp_server_does_not_hold_up_the_queue(
    start_mailer: StartMailer, publisher: Bus, pool: asyncpg.Pool
) -> None:
    await start_mailer(free_port(), mailer_retry_base_seconds=60)
    jobs = [invitation_job(_address())[0] for _ in range(20)]
    for job in jobs:
        await publish_job(publisher, job)
    for job in jobs:
        await wait_for_row(pool, job.mail_id, lambda r: True, timeout=5)
    # Leave nothing for a mailer in a later test to send.
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL WHERE mail_id = ANY($1)",
        [job.mail_id for job in jobs],
    )


class SlowSink(Sink):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(1.0)
        return await super().handle_DATA(server, session, envelope)


async def test_shutdown_finishes_the_send_in_hand(
    start_mailer: StartMailer, publisher: Bus, pool: asyncpg.Pool
) -> None:
    sink = SlowSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        client = await start_mailer(controller.port)
        job, _ = await publish_invitation(publisher)
        to = job.to
        await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sending")
        await client.close()  # the app shuts down while the SMTP server is still answering
        row = await pool.fetchrow("SELECT * FROM deliveries WHERE mail_id = $1", job.mail_id)
        assert row["status"] == "sent"
        assert len(sink.to(to)) == 1
        [event] = await outbox_events(pool, job.mail_id)
        assert event["type"] == "mail.sent"
        published = await pool.fetchval(
            "SELECT published_at FROM outbox WHERE id = $1", uuid.UUID(event["id"])
        )
        assert published is not None, "the relay drained mail.sent before the bus closed"
    finally:
        controller.stop()


class _TenMinutesBehind(datetime):
    """The mailer host's clock, ten minutes behind the database server's."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) - timedelta(minutes=10)


async def test_a_retry_waits_its_delay_on_the_database_clock_whatever_the_mailer_host_says(
    start_mailer: StartMailer,
    publisher: Bus,
    smtp_sink: SmtpSink,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue is read on the database's clock (next_attempt_at <= now()); a retry
    planned on the mailer's own clock, ten minutes behind, fell due at once: every
    failing email was tried again at each poll instead of a minute later."""
    monkeypatch.setattr("services.mailer.sender.datetime", _TenMinutesBehind)
    smtp_sink.sink.fail_with = "451 4.3.0 try later"
    await start_mailer(smtp_sink.port, mailer_retry_base_seconds=60)
    job, _ = await publish_invitation(publisher)
    row = await wait_for_row(pool, job.mail_id, lambda r: r["last_error"] is not None)
    database_now = await pool.fetchval("SELECT clock_timestamp()")
    assert row["attempts"] == 1
    assert row["status"] == "queued"
    assert row["next_attempt_at"] > database_now + timedelta(seconds=50), (
        row["next_attempt_at"],
        database_now,
    )


async def test_an_email_from_an_internationalised_domain_arrives_from_its_ascii_form(
    start_mailer: StartMailer, publisher: Bus, smtp_sink: SmtpSink
) -> None:
    """MAIL_FROM at a domain like bücher.example: every email raised UnicodeEncodeError
    in the worker (the From header is ASCII) and none was sent, though /readyz said 200."""
    await start_mailer(smtp_sink.port, mail_from="Bücher Büro <no-reply@bücher.example>")
    job, _ = await publish_invitation(publisher)

    [msg] = await smtp_sink.sink.wait_for(job.to)
    assert msg["From"].addresses[0].addr_spec == "no-reply@xn--bcher-kva.example"
    assert msg["From"].addresses[0].display_name == "Bücher Büro"
    assert msg["Message-ID"].endswith("@xn--bcher-kva.example>")


async def test_a_message_id_names_the_public_site_when_mail_from_is_this_machines(
    start_mailer: StartMailer, publisher: Bus, smtp_sink: SmtpSink
) -> None:
    """MAIL_FROM left at no-reply@localhost on a public site (a relay that rewrites the
    sender delivers it): the Message-ID said @localhost, which filters count against."""
    await start_mailer(
        smtp_sink.port,
        mail_from="ClientPress <no-reply@localhost>",
        public_url="https://portal.agency.example",
    )
    job, _ = await publish_invitation(publisher)

    [msg] = await smtp_sink.sink.wait_for(job.to)
    assert msg["Message-ID"].endswith("@portal.agency.example>"), msg["Message-ID"]
    assert msg["From"].addresses[0].addr_spec == "no-reply@localhost"  # as the operator set
