"""An erased person in the mailer (mail.forget from identity): the records of email to
their address keep no address, context or error, one not sent yet never is, the webhook
deliveries naming them go, and the same mail job delivered again still sends nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from libs.common.events import MailForget, make_event
from libs.common.sealing import Sealer, new_key
from services.mailer import handlers
from services.mailer.consumer import HANDLERS, on_mail_forget
from services.mailer.domain import RequestMail
from services.mailer.handlers import ERASED_ADDRESS, Deps
from services.mailer.settings import MailerSettings
from services.mailer.webhooks import repository as webhook_repository
from tests.support.erasure import places_naming

pytestmark = pytest.mark.integration

REF_TYPE = "test-erasure"


def _deps(db: Any) -> Deps:
    return Deps(db=db, settings=MailerSettings(), clock=lambda: datetime.now(UTC))


async def _settle_queued(pool: asyncpg.Pool) -> None:
    """This file's queued emails failed and cleared, so no later test's mailer sends them."""
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE ref_type = $1 AND status IN ('queued', 'sending')",
        REF_TYPE,
    )


def _job(to: str) -> RequestMail:
    return RequestMail(
        mail_id=uuid.uuid4(),
        template="invitation",
        to=to,
        ref_type=REF_TYPE,
        ref_id=uuid.uuid4(),
        context={"accept_url": "http://x/invitations/accept?token=t", "invitee_name": "Erin"},
    )


async def test_an_erased_address_leaves_no_record_and_its_queued_email_is_never_sent(
    pool: asyncpg.Pool,
) -> None:
    address = f"erin-{uuid.uuid4().hex[:8]}@Example.com"
    sent, queued, other = _job(address), _job(address.lower()), _job("other@example.com")
    await handlers.request_mails(_deps(pool), [sent, queued, other])
    await pool.execute(
        "UPDATE deliveries SET status = 'sent', sent_at = now(), context = NULL, last_error = $2"
        " WHERE mail_id = $1",
        sent.mail_id,
        f"451 try again <{address}>",
    )
    await pool.execute(
        "UPDATE deliveries SET next_attempt_at = now() + interval '10 years'"
        " WHERE mail_id = ANY($1::uuid[])",
        [queued.mail_id, other.mail_id],
    )
    endpoint = uuid.uuid4()
    async with pool.acquire() as conn:
        await webhook_repository.insert_endpoint(
            conn, endpoint, "https://hooks.example.org/in", ["invitation.created"], "sealed"
        )
        events = [
            (uuid.uuid4(), "invitation.created", f'{{"email": "{address.lower()}"}}'),
            (uuid.uuid4(), "invitation.created", '{"email": "other@example.com"}'),
        ]
        await webhook_repository.queue_for_events(conn, events)
    try:
        async with pool.acquire() as conn:
            assert await places_naming(conn, "mailer", address)
        assert "mail.forget" in HANDLERS
        sealed = MailerSettings().sealer().seal_text(orjson.dumps([address]).decode())
        data = MailForget(sealed=sealed)
        forget = make_event("mail.forget", data, source="identity")
        async with pool.acquire() as conn, conn.transaction():
            await on_mail_forget(_deps(conn), forget, data)

        async with pool.acquire() as conn:
            assert await places_naming(conn, "mailer", address) == []
        rows = {
            r["mail_id"]: r
            for r in await pool.fetch(
                "SELECT mail_id, to_address, status, context FROM deliveries"
                " WHERE mail_id = ANY($1::uuid[])",
                [sent.mail_id, queued.mail_id, other.mail_id],
            )
        }
        assert rows[sent.mail_id]["status"] == "sent"
        assert rows[queued.mail_id]["status"] == "failed"  # never sent now
        assert {rows[m]["to_address"] for m in (sent.mail_id, queued.mail_id)} == {ERASED_ADDRESS}
        assert rows[other.mail_id]["to_address"] == "other@example.com"
        assert rows[other.mail_id]["status"] == "queued"
        left = await pool.fetch(
            "SELECT event_id FROM webhook_deliveries WHERE endpoint_id = $1", endpoint
        )
        assert [r["event_id"] for r in left] == [events[1][0]]

        # The same job delivered again (a broker redelivery) sends nothing to the person.
        await handlers.request_mails(_deps(pool), [queued])
        assert (
            await pool.fetchval("SELECT status FROM deliveries WHERE mail_id = $1", queued.mail_id)
            == "failed"
        )
        # Forgetting again finds nothing more.
        now = datetime.now(UTC)
        assert await handlers.forget_addresses(_deps(pool), [address], now) == (0, 0)
    finally:
        await pool.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint)
        await _settle_queued(pool)


async def test_a_forget_not_sealed_with_the_key_changes_nothing(pool: asyncpg.Pool) -> None:
    job = _job(f"kept-{uuid.uuid4().hex[:8]}@example.com")
    await handlers.request_mails(_deps(pool), [job])
    try:
        forged = MailForget(sealed=Sealer(new_key()).seal_text(orjson.dumps([job.to]).decode()))
        envelope = make_event("mail.forget", forged, source="identity")
        await on_mail_forget(_deps(pool), envelope, forged)
        kept = await pool.fetchval(
            "SELECT to_address FROM deliveries WHERE mail_id = $1", job.mail_id
        )
        assert kept == job.to
    finally:
        await pool.execute(
            "UPDATE deliveries SET status = 'failed', context = NULL WHERE mail_id = $1",
            job.mail_id,
        )


async def test_a_late_forget_leaves_a_new_person_at_the_address_alone(pool: asyncpg.Pool) -> None:
    """The mailer was behind: the person was invited again before mail.forget came."""
    address = f"late-{uuid.uuid4().hex[:8]}@example.com"
    old = _job(address)
    await handlers.request_mails(_deps(pool), [old])
    erased_at = datetime.now(UTC)
    new = _job(address)
    await handlers.request_mails(_deps(pool), [new])
    await pool.execute(
        "UPDATE deliveries SET next_attempt_at = now() + interval '10 years'"
        " WHERE mail_id = ANY($1::uuid[])",
        [old.mail_id, new.mail_id],
    )
    try:
        await handlers.forget_addresses(_deps(pool), [address], erased_at)
        rows = {
            r["mail_id"]: (r["to_address"], r["status"])
            for r in await pool.fetch(
                "SELECT mail_id, to_address, status FROM deliveries WHERE mail_id = ANY($1)",
                [old.mail_id, new.mail_id],
            )
        }
        assert rows == {old.mail_id: (ERASED_ADDRESS, "failed"), new.mail_id: (address, "queued")}
    finally:
        await _settle_queued(pool)


async def test_an_address_with_a_capital_final_sigma_is_forgotten_too(pool: asyncpg.Pool) -> None:
    """The records were matched on the address lowered by Python's str.lower, which makes
    a word-final capital sigma U+03C2, against PostgreSQL's lower(), which makes it U+03C3
    as every other sigma: ΝΙΚΟΣ-…@example.gr, erased, kept its email's record (the
    address, the names, the sealed link) and the webhook deliveries naming it."""
    address = f"ΝΙΚΟΣ-{uuid.uuid4().hex[:8]}@example.gr"
    job = _job(address)
    await handlers.request_mails(_deps(pool), [job])
    await pool.execute(
        "UPDATE deliveries SET next_attempt_at = now() + interval '10 years' WHERE mail_id = $1",
        job.mail_id,
    )
    endpoint = uuid.uuid4()
    async with pool.acquire() as conn:
        await webhook_repository.insert_endpoint(
            conn, endpoint, "https://hooks.example.org/in", ["invitation.created"], "sealed"
        )
        payload = orjson.dumps({"email": address}).decode()
        await webhook_repository.queue_for_events(
            conn, [(uuid.uuid4(), "invitation.created", payload)]
        )
    try:
        await handlers.forget_addresses(_deps(pool), [address], datetime.now(UTC))
        async with pool.acquire() as conn:
            assert await places_naming(conn, "mailer", address) == []
        assert (
            await pool.fetchval("SELECT to_address FROM deliveries WHERE mail_id = $1", job.mail_id)
            == ERASED_ADDRESS
        )
    finally:
        await pool.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint)
        await _settle_queued(pool)
