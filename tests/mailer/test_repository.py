"""The deliveries table under concurrency, on the real schema: idempotent recording,
one claim per row, stale claims, crash recovery."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from services.mailer import handlers, repository
from services.mailer.domain import FailureReason, RequestMail
from services.mailer.handlers import Deps
from services.mailer.sender import Sender
from services.mailer.settings import MailerSettings
from services.mailer.smtp import SmtpTransport
from tests.mailer.conftest import mailer_settings, outbox_events, retire_unsent
from tests.support.env import TestEnv, free_port

pytestmark = pytest.mark.integration

REF_TYPE = "test-repository"


@pytest.fixture(autouse=True)
async def _leave_nothing_to_send(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Rows made here must never be picked up later by a mailer in another test."""
    yield
    await retire_unsent(pool, REF_TYPE)


def _command(mail_id: uuid.UUID | None = None, to: str = "c@example.com") -> RequestMail:
    return RequestMail(
        mail_id=mail_id or uuid.uuid4(),
        template="invitation",
        to=to,
        ref_type=REF_TYPE,
        ref_id=uuid.uuid4(),
        context={"accept_url": "http://x/invitations/accept?token=t"},
    )


def _deps(db: Any) -> Deps:
    return Deps(db=db, settings=MailerSettings())


async def _record(pool: asyncpg.Pool, command: RequestMail) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        return command.mail_id in await handlers.request_mails(_deps(conn), [command])


async def test_sixteen_concurrent_copies_of_one_job_record_one_delivery(
    pool: asyncpg.Pool,
) -> None:
    command = _command(to="Someone@Example.COM")
    results = await asyncio.gather(*(_record(pool, command) for _ in range(16)))
    assert results.count(True) == 1
    rows = await pool.fetch("SELECT * FROM deliveries WHERE mail_id = $1", command.mail_id)
    assert len(rows) == 1 and rows[0]["to_address"] == "Someone@example.com"


async def test_sixteen_concurrent_claims_take_one_row_once(pool: asyncpg.Pool) -> None:
    # Park everything else already queued so only our rows are due.
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE status IN ('queued', 'sending')"
    )
    command = _command()
    await _record(pool, command)

    async def claim() -> Any:
        async with pool.acquire() as conn:
            return await handlers.claim_next(_deps(conn))

    claims = [c for c in await asyncio.gather(*(claim() for _ in range(16))) if c is not None]
    assert len(claims) == 1 and claims[0][0].mail_id == command.mail_id
    assert claims[0][0].attempts == 1


async def test_sixteen_workers_share_sixteen_rows_without_overlap(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE status IN ('queued', 'sending')"
    )
    ids = set()
    for _ in range(16):
        command = _command()
        ids.add(command.mail_id)
        await _record(pool, command)

    async def claim() -> Any:
        async with pool.acquire() as conn:
            return await handlers.claim_next(_deps(conn))

    claims = await asyncio.gather(*(claim() for _ in range(16)))
    claimed = [c[0].mail_id for c in claims if c is not None]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= ids


async def test_a_stale_claim_cannot_finish_a_row_recovered_from_a_crash(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE status IN ('queued', 'sending')"
    )
    command = _command()
    await _record(pool, command)
    async with pool.acquire() as conn:
        first = await handlers.claim_next(_deps(conn))
    assert first is not None
    # The worker "crashed": its claim is three minutes old.
    await pool.execute(
        "UPDATE deliveries SET claimed_at = claimed_at - interval '3 minutes' WHERE mail_id = $1",
        command.mail_id,
    )
    async with pool.acquire() as conn:
        assert await repository.requeue_stuck(conn) == 1
        second = await handlers.claim_next(_deps(conn))
        assert second is not None and second[0].attempts == 2
        # The old worker wakes up and reports: nothing happens.
        assert not await handlers.record_sent(_deps(conn), first[0], first[1])
        assert not await handlers.record_failure(
            _deps(conn), first[0], first[1], FailureReason.REJECTED, "550"
        )
        assert await handlers.record_sent(_deps(conn), second[0], second[1])
    row = await pool.fetchrow("SELECT * FROM deliveries WHERE mail_id = $1", command.mail_id)
    assert row["status"] == "sent" and row["context"] is None


async def test_recent_sends_are_not_taken_for_crashes(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE status IN ('queued', 'sending')"
    )
    await _record(pool, _command())
    async with pool.acquire() as conn:
        assert await handlers.claim_next(_deps(conn)) is not None
        assert await repository.requeue_stuck(conn) == 0


async def test_a_row_that_keeps_crashing_its_worker_ends_as_failed(
    pool: asyncpg.Pool, migrated_schemas: TestEnv
) -> None:
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE status IN ('queued', 'sending')"
    )
    command = _command()
    await _record(pool, command)
    # Claims already made, each lost with its worker, until the horizon passed.
    await pool.execute(
        "UPDATE deliveries SET attempts = 3, created_at = now() - interval '49 hours'"
        " WHERE mail_id = $1",
        command.mail_id,
    )
    settings = mailer_settings(migrated_schemas, free_port())
    sender = Sender(Deps(db=pool, settings=settings))
    assert await sender.send_next(SmtpTransport(settings))
    row = await pool.fetchrow("SELECT * FROM deliveries WHERE mail_id = $1", command.mail_id)
    assert row["status"] == "failed" and row["context"] is None and row["attempts"] == 4
    [event] = await outbox_events(pool, command.mail_id)
    assert event["type"] == "mail.failed" and event["data"]["reason"] == "max_attempts"


async def test_a_claim_lost_in_the_air_is_handed_back_at_once(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE status IN ('queued', 'sending')"
    )
    command = _command()
    await _record(pool, command)
    claim_id = uuid.uuid4()
    async with pool.acquire() as conn:
        # The claim committed, but (say) the connection died before the worker heard.
        assert await handlers.claim_next(_deps(conn), claim_id) is not None
        assert not await handlers.release_claim(_deps(conn), uuid.uuid4())  # someone else's claim
        assert await handlers.release_claim(_deps(conn), claim_id)
        row = await conn.fetchrow(
            "SELECT status, attempts, claim_id FROM deliveries WHERE mail_id = $1",
            command.mail_id,
        )
        assert (row["status"], row["attempts"], row["claim_id"]) == ("queued", 0, None)
        # It is due again straight away, and the release does nothing twice.
        again = await handlers.claim_next(_deps(conn))
        assert again is not None and again[0].mail_id == command.mail_id
        assert again[0].attempts == 1
        assert not await handlers.release_claim(_deps(conn), claim_id)
