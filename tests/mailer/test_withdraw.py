"""Emails withdrawn by invitations (mail.withdraw): one waiting for a retry is never sent
once the server answers again, one whose job comes after the withdrawal is never sent
either, and no withdrawn delivery keeps its link."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from prometheus_client import REGISTRY

from libs.common import broker
from libs.common.bus import Bus
from libs.common.events import MailRequested, MailWithdraw, make_event
from services.mailer import handlers, repository
from services.mailer.domain import Delivery
from services.mailer.handlers import Deps
from services.mailer.settings import MailerSettings
from tests.mailer.conftest import (
    StartMailer,
    invitation_job,
    outbox_events,
    publish_invitation,
    publish_job,
    wait_for_row,
)
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration


def _withdrawn_count() -> float:
    return REGISTRY.get_sample_value("clientpress_emails_withdrawn_total") or 0.0


async def _withdraw(bus: Bus, *mail_ids: uuid.UUID) -> None:
    """As invitations sends it: on the mail exchange, as the invitations user."""
    data = MailWithdraw(mail_ids=list(mail_ids))
    await bus.publish_envelope(make_event("mail.withdraw", data, source="invitations"), "mail")


async def test_an_email_waiting_for_a_retry_is_never_sent_once_withdrawn(
    start_mailer: StartMailer, publisher: Bus, smtp_sink: SmtpSink, pool: asyncpg.Pool
) -> None:
    smtp_sink.sink.fail_with = "451 4.3.0 try later"
    await start_mailer(smtp_sink.port, mailer_retry_max_seconds=0.3)
    job, _ = await publish_invitation(publisher)
    await wait_for_row(pool, job.mail_id, lambda r: r["attempts"] >= 2)

    before = _withdrawn_count()
    await _withdraw(publisher, job.mail_id)
    row = await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "withdrawn")
    assert row["context"] is None
    assert _withdrawn_count() - before >= 1  # clientpress_emails_withdrawn_total
    smtp_sink.sink.fail_with = None
    # The server answers again: a retry would have gone well within this.
    await asyncio.sleep(1.5)
    assert smtp_sink.sink.to(job.to) == []
    row = await wait_for_row(pool, job.mail_id, lambda r: True)
    assert row["status"] == "withdrawn" and row["context"] is None
    # Nothing announced for a deliberate withdrawal: no mail.failed, no mail.sent.
    types = {e["type"] for e in await outbox_events(pool, job.mail_id)}
    assert types <= {"mail.retrying"}


async def test_a_job_that_comes_after_its_withdrawal_is_never_sent(
    start_mailer: StartMailer, publisher: Bus, smtp_sink: SmtpSink, pool: asyncpg.Pool
) -> None:
    """Two messages, no order between them (outbox relays of several replicas, a
    redelivery): the withdrawal is remembered, and the late job recorded withdrawn."""
    await start_mailer(smtp_sink.port)
    job, _ = invitation_job(f"late-{uuid.uuid4().hex[:8]}@example.com")
    await _withdraw(publisher, job.mail_id)
    await _remembered(pool, job.mail_id)
    await publish_job(publisher, job)

    row = await wait_for_row(pool, job.mail_id, lambda r: True)
    assert row["status"] == "withdrawn" and row["context"] is None
    # A later job is still sent: the mailer was running all along.
    other, _ = await publish_invitation(publisher)
    await smtp_sink.sink.wait_for(other.to)
    assert smtp_sink.sink.to(job.to) == []


async def test_a_delivery_handed_back_after_its_withdrawal_is_never_claimed(
    pool: asyncpg.Pool,
) -> None:
    """A try under way when the withdrawal came, then retried (or recovered after a
    crash), is back in the queue: no sender takes it, and it loses its link."""
    job, _ = invitation_job("held@example.com")
    async with pool.acquire() as conn:
        with pytest.raises(_Rollback):  # left as it was: no later mailer finds the row
            async with conn.transaction():
                await _hand_back_after_withdrawal(conn, job)


async def _hand_back_after_withdrawal(conn: asyncpg.Connection, job: MailRequested) -> None:
    await conn.execute(
        "INSERT INTO deliveries (mail_id, template, to_address, ref_type, ref_id, context,"
        " status, next_attempt_at) VALUES ($1, 'invitation', $2, 'test-withdraw', $3,"
        " '{\"sealed\": \"x\"}', 'sending', now() - interval '1 hour')",
        job.mail_id,
        job.to,
        job.ref_id,
    )
    assert await repository.withdraw(conn, [job.mail_id]) == []
    # The try is over; the row goes back to the queue as a retry does.
    await conn.execute("UPDATE deliveries SET status = 'queued' WHERE mail_id = $1", job.mail_id)
    claimed = await repository.claim_due(conn, 1000)
    assert job.mail_id not in {delivery.mail_id for delivery, _ in claimed}
    assert await repository.withdraw_queued(conn) >= 1
    row = await conn.fetchrow("SELECT * FROM deliveries WHERE mail_id = $1", job.mail_id)
    assert row["status"] == "withdrawn" and row["context"] is None
    raise _Rollback


async def test_a_try_under_way_when_withdrawn_is_not_retried_nor_announced(
    pool: asyncpg.Pool,
) -> None:
    """The sender had the email in hand when the withdrawal came; the server answered 451:
    the delivery ends withdrawn (no mail.retrying, no later try). One not withdrawn is
    left to be retried."""
    withdrawn, _ = invitation_job("in-hand@example.com")
    kept, _ = invitation_job("kept@example.com")
    async with pool.acquire() as conn:
        with pytest.raises(_Rollback):
            async with conn.transaction():
                claimed_at = await conn.fetchval("SELECT clock_timestamp()")
                for job in (withdrawn, kept):
                    await conn.execute(
                        "INSERT INTO deliveries (mail_id, template, to_address, ref_type,"
                        " ref_id, context, status, claimed_at, attempts) VALUES ($1,"
                        " 'invitation', $2, 'test-withdraw', $3, '{\"sealed\": \"x\"}',"
                        " 'sending', $4, 1)",
                        job.mail_id,
                        job.to,
                        job.ref_id,
                        claimed_at,
                    )
                await repository.withdraw(conn, [withdrawn.mail_id])
                deps = Deps(db=conn, settings=MailerSettings(), clock=lambda: claimed_at)
                for job, ends in ((withdrawn, True), (kept, False)):
                    delivery = Delivery(
                        mail_id=job.mail_id,
                        template="invitation",
                        to_address=job.to,
                        ref_type="test-withdraw",
                        ref_id=job.ref_id,
                        context={},
                        attempts=1,
                        correlation_id=None,
                        queued_at=claimed_at,
                    )
                    assert await handlers.end_withdrawn(deps, delivery, claimed_at, "451") is ends
                row = await conn.fetchrow(
                    "SELECT * FROM deliveries WHERE mail_id = $1", withdrawn.mail_id
                )
                assert row["status"] == "withdrawn" and row["context"] is None
                assert row["last_error"] == "451"
                status = await conn.fetchval(
                    "SELECT status FROM deliveries WHERE mail_id = $1", kept.mail_id
                )
                assert status == "sending"
                raise _Rollback


class _Rollback(Exception):
    pass


async def _remembered(pool: asyncpg.Pool, mail_id: uuid.UUID) -> None:
    for _ in range(500):
        if await pool.fetchval("SELECT true FROM withdrawn_mails WHERE mail_id = $1", mail_id):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the withdrawal was never recorded")


def test_only_invitations_may_withdraw_an_email() -> None:
    """The mailer itself (whose mail.* announcements are its own) and identity (which sends
    mail jobs too) may not: a withdrawal from them is not acted on."""
    for service in ("mailer", "identity", "portals", "gateway"):
        sender = broker.broker_user("cp", service)
        assert broker.sender_problem("cp", "mail.withdraw", "mail.withdraw", sender), service
    invitations = broker.broker_user("cp", "invitations")
    assert broker.sender_problem("cp", "mail.withdraw", "mail.withdraw", invitations) is None
    grants = {s: broker.service_grant("cp", s).topics["cp.mail"] for s in broker.SERVICES}
    assert [s for s, (write, _) in grants.items() if "withdraw" in write] == ["invitations"]
    assert [s for s, (_, read) in grants.items() if "withdraw" in read] == ["mailer"]
