"""The senders share their database writes (issue 16): the workers' claims go in one
statement, and the outcomes of sends that finish together are recorded in one, each with
its own ``mail.sent`` event; a claim taken over meanwhile is still refused."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller

from libs.common.sealing import DEVELOPMENT_KEY, Sealer
from services.mailer import handlers
from services.mailer import sender as sender_module
from services.mailer.domain import Delivery, RequestMail
from services.mailer.handlers import Deps
from services.mailer.sender import Sender
from services.mailer.settings import MailerSettings
from tests.mailer.conftest import mailer_settings, outbox_events
from tests.support.env import TestEnv, free_port
from tests.support.smtp import Sink

pytestmark = pytest.mark.integration

WORKERS = 8
REF_TYPE = "test-group-commit"


class HoldingSink(Sink):
    """Holds each message until ``hold`` have arrived, then answers them all: the senders'
    outcomes come back at once, as they do under load."""

    def __init__(self, hold: int) -> None:
        super().__init__()
        self.hold = hold
        self.arrived = 0
        self.all_here: asyncio.Event | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.all_here is None:
            self.all_here = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.hold:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), timeout=10)
        return await super().handle_DATA(server, session, envelope)


def _command(to: str) -> RequestMail:
    return RequestMail(
        mail_id=uuid.uuid4(),
        template="invitation",
        to=to,
        ref_type=REF_TYPE,
        ref_id=uuid.uuid4(),
        # Sealed, as identity and invitations write it.
        context=Sealer(DEVELOPMENT_KEY).seal(
            {
                "accept_url": f"http://localhost:8080/invitations/accept?token={uuid.uuid4()}",
                "portal_title": "Acme Rebrand",
                "site_name": "Northwind Agency",
                "expires_at": "2026-12-09T15:30:00+00:00",
                "invited_by": "Jane Admin",
            }
        ),
    )


async def _clear_queue(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE status IN ('queued', 'sending')"
    )


async def test_sends_finishing_together_are_claimed_and_recorded_together(
    pool: asyncpg.Pool, migrated_schemas: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _clear_queue(pool)
    commands = [
        _command(f"together-{n}-{uuid.uuid4().hex[:6]}@example.com") for n in range(WORKERS)
    ]
    async with pool.acquire() as conn, conn.transaction():
        for command in commands:
            deps = Deps(db=conn, settings=MailerSettings())
            assert command.mail_id in await handlers.request_mails(deps, [command])

    claims: list[int] = []
    records: list[int] = []
    claim, record = handlers.claim, handlers.record_sent_many

    async def counted_claim(deps: Deps, limit: int, claim_id: uuid.UUID | None = None) -> Any:
        claimed = await claim(deps, limit, claim_id)
        if claimed:
            claims.append(len(claimed))
        return claimed

    async def counted_record(
        deps: Deps, sends: Sequence[tuple[Delivery, Any, str | None]]
    ) -> list[bool]:
        records.append(len(sends))
        return await record(deps, sends)

    monkeypatch.setattr(handlers, "claim", counted_claim)
    monkeypatch.setattr(handlers, "record_sent_many", counted_record)

    sink = HoldingSink(hold=WORKERS)
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    settings = mailer_settings(migrated_schemas, port, mailer_concurrency=WORKERS)
    sender = Sender(Deps(db=pool, settings=settings))
    try:
        await sender.start()
        deadline = time.monotonic() + 20
        while sum(records) < WORKERS and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await sender.stop()
        controller.stop()

    assert sorted(str(m["To"]) for m in sink.messages) == sorted(c.to for c in commands)
    # One by one, each would be WORKERS statements. The claims ask at once; the outcomes
    # come back within a moment of each other (the sink answers from another thread).
    assert sum(claims) == WORKERS and len(claims) <= 2, claims
    assert sum(records) == WORKERS and len(records) <= WORKERS // 2, records
    for command in commands:
        row = await pool.fetchrow(
            "SELECT status, context, attempts FROM deliveries WHERE mail_id = $1",
            command.mail_id,
        )
        assert (row["status"], row["context"], row["attempts"]) == ("sent", None, 1)
        [event] = await outbox_events(pool, command.mail_id)
        assert event["type"] == "mail.sent" and event["data"]["ref_id"] == str(command.ref_id)


async def test_a_batch_of_outcomes_refuses_only_the_claim_taken_over(
    pool: asyncpg.Pool,
) -> None:
    await _clear_queue(pool)
    stale, fresh = _command("stale@example.com"), _command("fresh@example.com")
    deps = Deps(db=pool, settings=MailerSettings())
    for command in (stale, fresh):
        assert command.mail_id in await handlers.request_mails(deps, [command])
    claimed = await handlers.claim(deps, 2)
    assert len(claimed) == 2
    by_id = {delivery.mail_id: (delivery, at) for delivery, at in claimed}
    # Crash recovery gave the stale one to another worker meanwhile.
    await pool.execute(
        "UPDATE deliveries SET claimed_at = claimed_at + interval '1 second' WHERE mail_id = $1",
        stale.mail_id,
    )
    recorded = await handlers.record_sent_many(
        deps, [(*by_id[stale.mail_id], None), (*by_id[fresh.mail_id], None)]
    )
    assert recorded == [False, True]
    assert await outbox_events(pool, stale.mail_id) == []
    [event] = await outbox_events(pool, fresh.mail_id)
    assert event["type"] == "mail.sent"
    status = await pool.fetchval("SELECT status FROM deliveries WHERE mail_id = $1", stale.mail_id)
    assert status == "sending"
    await _clear_queue(pool)


async def test_a_claim_whose_answer_was_lost_is_handed_back_once_it_lands(
    pool: asyncpg.Pool, migrated_schemas: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dropped while the claim was on its way (tests/faults/
    test_connection_cut.py): the worker hears an error at once, but the server still
    runs the statement and commits it a moment later. Handing the claim back at once
    found nothing, and the claimed rows waited in 'sending' for the stuck-row sweep
    (``MAILER_STUCK_SENDING_SECONDS``, 120 s by default) before they were sent."""
    await _clear_queue(pool)
    command = _command(f"lost-claim-{uuid.uuid4().hex[:6]}@example.com")
    async with pool.acquire() as conn:
        assert command.mail_id in await handlers.request_mails(
            Deps(db=conn, settings=MailerSettings()), [command]
        )

    claim = handlers.claim
    orphans: list[asyncio.Task[Any]] = []

    async def lost_once(deps: Deps, limit: int, claim_id: uuid.UUID | None = None) -> Any:
        if orphans:
            return await claim(deps, limit, claim_id)

        async def orphan() -> None:  # the statement the server still runs
            await asyncio.sleep(0.5)
            await claim(deps, limit, claim_id)

        orphans.append(asyncio.create_task(orphan()))
        raise asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )

    monkeypatch.setattr(handlers, "claim", lost_once)
    monkeypatch.setattr(sender_module, "MAINTENANCE_SECONDS", 0.5)
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    sender = Sender(Deps(db=pool, settings=mailer_settings(migrated_schemas, port)))
    try:
        await sender.start()
        deadline = time.monotonic() + 10
        while not sink.messages and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await sender.stop()
        controller.stop()
        await asyncio.gather(*orphans)

    row = await pool.fetchrow(
        "SELECT status, attempts FROM deliveries WHERE mail_id = $1", command.mail_id
    )
    assert (row["status"], row["attempts"], len(sink.messages)) == ("sent", 1, 1)
