"""What the mailer forgets (MAILER_RETENTION_DAYS): the records of emails sent or given
up and the webhook delivery log's finished rows, in batches; a mail job older than that
is not sent."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pydantic
import pytest

from libs.common.events import make_event
from services.mailer import handlers, repository
from services.mailer.consumer import on_mail_requested
from services.mailer.domain import RequestMail
from services.mailer.handlers import Deps
from services.mailer.settings import MailerSettings
from services.mailer.webhooks import repository as webhook_repository
from tests.mailer.conftest import invitation_job, retire_unsent, sealed

pytestmark = pytest.mark.integration

REF_TYPE = "test-retention"


@pytest.fixture(autouse=True)
async def _leave_nothing_to_send(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Rows made here must never be picked up later by a mailer in another test."""
    yield
    await retire_unsent(pool, REF_TYPE)


def _deps(db: Any, *, days_later: float = 0) -> Deps:
    later = datetime.now(UTC) + timedelta(days=days_later)
    return Deps(db=db, settings=MailerSettings(), clock=lambda: later)


async def _record(pool: asyncpg.Pool, status: str) -> uuid.UUID:
    command = RequestMail(
        mail_id=uuid.uuid4(),
        template="invitation",
        to="client@example.com",
        ref_type=REF_TYPE,
        ref_id=uuid.uuid4(),
        context={"accept_url": "http://x/invitations/accept?token=t"},
    )
    await handlers.request_mails(_deps(pool), [command])
    if status != "queued":
        await pool.execute(
            "UPDATE deliveries SET status = $2, context = NULL,"
            " sent_at = CASE WHEN $2 = 'sent' THEN now() END,"
            " last_error = CASE WHEN $2 = 'failed' THEN '550 no such user' END"
            " WHERE mail_id = $1",
            command.mail_id,
            status,
        )
    else:  # not due for years: no mailer of another test takes it meanwhile
        await pool.execute(
            "UPDATE deliveries SET next_attempt_at = now() + interval '10 years'"
            " WHERE mail_id = $1",
            command.mail_id,
        )
    return command.mail_id


async def _kept(pool: asyncpg.Pool, table: str, column: str, ids: list[uuid.UUID]) -> set[Any]:
    rows = await pool.fetch(f"SELECT {column} FROM {table} WHERE {column} = ANY($1)", ids)
    return {row[column] for row in rows}


async def test_finished_emails_and_webhook_deliveries_go_after_the_retention(
    pool: asyncpg.Pool,
) -> None:
    sent, failed, queued = [await _record(pool, s) for s in ("sent", "failed", "queued")]
    endpoint = uuid.uuid4()
    async with pool.acquire() as conn:
        await webhook_repository.insert_endpoint(
            conn, endpoint, "https://hooks.example.org/in", ["invitation.created"], "sealed"
        )
        events = [(uuid.uuid4(), "invitation.created", '{"email": "client@example.com"}')]
        events.append((uuid.uuid4(), "invitation.created", '{"email": "other@example.com"}'))
        assert await webhook_repository.queue_for_events(conn, events) == 2
    delivered, waiting = (e[0] for e in events)
    await pool.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', last_attempt_at = now(),"
        " delivered_at = now() WHERE event_id = $1",
        delivered,
    )
    await pool.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now() + interval '10 years'"
        " WHERE event_id = $1",
        waiting,
    )
    try:
        # Within the thirty days: everything stays.
        await handlers.prune_finished(_deps(pool, days_later=29))
        assert await _kept(pool, "deliveries", "mail_id", [sent, failed]) == {sent, failed}
        assert await _kept(pool, "webhook_deliveries", "event_id", [delivered]) == {delivered}

        pruned = await handlers.prune_finished(_deps(pool, days_later=31))
        assert pruned["deliveries"] >= 2 and pruned["webhook_deliveries"] >= 1
        assert await _kept(pool, "deliveries", "mail_id", [sent, failed, queued]) == {queued}
        assert await _kept(pool, "webhook_deliveries", "event_id", [delivered, waiting]) == {
            waiting
        }
    finally:
        await pool.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint)


async def test_withdrawn_emails_and_their_ids_go_after_the_retention(pool: asyncpg.Pool) -> None:
    """A withdrawn delivery is pruned as a sent one, and so is the id withdrawn before its
    job came: a job that old is stale, never sent anyway."""
    delivered = await _record(pool, "queued")
    not_come = uuid.uuid4()
    async with pool.acquire() as conn:
        assert await repository.withdraw(conn, [delivered, not_come]) == [delivered]
    ids = [delivered, not_come]
    await handlers.prune_finished(_deps(pool, days_later=29))
    assert await _kept(pool, "deliveries", "mail_id", ids) == {delivered}
    assert await _kept(pool, "withdrawn_mails", "mail_id", ids) == set(ids)

    pruned = await handlers.prune_finished(_deps(pool, days_later=31))
    assert pruned["withdrawn_mails"] >= 2
    assert await _kept(pool, "deliveries", "mail_id", ids) == set()
    assert await _kept(pool, "withdrawn_mails", "mail_id", ids) == set()


async def test_a_mail_job_older_than_the_retention_is_not_sent(pool: asyncpg.Pool) -> None:
    old_job, _ = invitation_job("late@example.com")
    old = make_event("mail.requested", sealed(old_job), source="invitations")
    old = old.model_copy(update={"occurred_at": datetime.now(UTC) - timedelta(days=31)})
    fresh_job, _ = invitation_job("on-time@example.com")
    fresh = make_event("mail.requested", sealed(fresh_job), source="invitations")
    for envelope, job in ((old, old_job), (fresh, fresh_job)):
        await on_mail_requested(_deps(pool), envelope, sealed(job))
    ids = [old_job.mail_id, fresh_job.mail_id]
    try:
        assert await _kept(pool, "deliveries", "mail_id", ids) == {fresh_job.mail_id}
        outbox = await pool.fetch("SELECT body FROM outbox WHERE routing_key = 'mail.failed'")
        assert str(old_job.mail_id) not in {
            orjson.loads(r["body"])["data"]["mail_id"] for r in outbox
        }
    finally:
        await pool.execute(
            "UPDATE deliveries SET status = 'failed', context = NULL WHERE mail_id = ANY($1)",
            ids,
        )


def test_the_retention_may_not_be_shorter_than_the_inbox_remembers() -> None:
    with pytest.raises(pydantic.ValidationError, match="at least INBOX_RETENTION_HOURS"):
        MailerSettings(mailer_retention_days=7, inbox_retention_hours=240)
    assert MailerSettings(mailer_retention_days=10, inbox_retention_hours=240)
