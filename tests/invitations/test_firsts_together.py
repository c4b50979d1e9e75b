"""Concurrent single invitations written together (handlers/sending.FirstWrites, the
identity look-ups in clients.Directory): what each request gets and writes is what it
would alone, and a row that can't be written fails no other."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.context import CORRELATION_HEADER, set_deadline
from libs.common.errors import Unavailable
from services.invitations import repository as repo
from services.invitations.api import DEPS
from services.invitations.clients import Directory, PortalInfo
from services.invitations.handlers.sending import FirstWrites
from tests.invitations.conftest import (
    Clock,
    World,
    first_write,
    only_first_looks,
    outbox_events,
)

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def _held_statements(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many first invitations each statement carried; the first statement
    waits a moment, so the requests that arrive meanwhile queue up behind it."""
    sizes: list[int] = []
    real = repo.insert_firsts

    async def insert_firsts(db: Any, firsts: Sequence[Any], reason: str) -> Any:
        sizes.append(len(firsts))
        if len(sizes) == 1:
            await asyncio.sleep(0.3)
        return await real(db, firsts, reason)

    monkeypatch.setattr(repo, "insert_firsts", insert_firsts)
    return sizes


async def _invite(client: Client, portal_id: str, email: str, **extra: Any) -> tuple[int, Any]:
    correlation = uuid.uuid4().hex
    response = await client.post(
        "/invitations",
        json={"portal_id": portal_id, "email": email, **extra},
        headers={CORRELATION_HEADER: correlation},
    )
    return response.status, (await response.json()) | {"correlation": correlation}


async def test_concurrent_invitations_share_a_statement_and_each_gets_its_own_answer(
    client: Client, world: World, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _held_statements(monkeypatch)
    portal = world.add_portal()
    emails = [f"together-{uuid.uuid4().hex[:8]}@example.com" for _ in range(12)]
    # The same person twice, and one idempotency key twice (different addresses).
    repeated = emails[0]
    key = f"key-{uuid.uuid4().hex}"
    answers = await asyncio.gather(
        *(_invite(client, portal["id"], email) for email in emails),
        _invite(client, portal["id"], repeated),
        _invite(
            client,
            portal["id"],
            f"keyed-a-{uuid.uuid4().hex[:6]}@example.com",
            **{"idempotency_key": key},
        ),
        _invite(
            client,
            portal["id"],
            f"keyed-b-{uuid.uuid4().hex[:6]}@example.com",
            **{"idempotency_key": key},
        ),
    )
    assert max(sizes) > 1, f"the requests never shared a statement: {sizes}"
    singles, twice, keyed = answers[:12], answers[12], answers[13:]
    for email, (status, body) in zip(emails[1:], singles[1:], strict=True):
        assert status == 201 and body["outcome"] == "created"
        assert body["invitation"]["email"] == email
    # The repeat: one request created the invitation, the other resent it, as in turn.
    outcomes = sorted([singles[0][1]["outcome"], twice[1]["outcome"]])
    assert outcomes == ["created", "resent"]
    assert singles[0][1]["invitation"]["id"] == twice[1]["invitation"]["id"]
    # One key, one invitation: the other request answers it as the first did.
    assert [body["outcome"] for _, body in keyed] == ["created", "created"]
    assert keyed[0][1]["invitation"]["id"] == keyed[1][1]["invitation"]["id"]
    assert (
        await pool.fetchval("SELECT count(*) FROM invitations WHERE idempotency_key = $1", key) == 1
    )
    # Each first invitation has its link and its two events, with its request's
    # correlation id.
    for _, body in singles[1:]:
        invitation_id = body["invitation"]["id"]
        events = await outbox_events(pool, invitation_id)
        assert [t for t, _ in events] == ["invitation.created", "mail.requested"]
        assert {e["correlation_id"] for _, e in events} == {body["correlation"]}
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM invitation_links WHERE invitation_id = $1",
                uuid.UUID(invitation_id),
            )
            == 1
        )


async def test_a_row_that_cannot_be_written_fails_no_other_in_its_statement(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    portal = world.add_portal()
    # The replica knows the portal once one invitation went through the API.
    status, _ = await _invite(client, portal["id"], f"seed-{uuid.uuid4().hex[:6]}@example.com")
    assert status == 201
    firsts = FirstWrites(pool)

    def write(email: str) -> repo.FirstWrite:
        return first_write(uuid.UUID(portal["id"]), email, clock.now)

    good = [write(f"fine-{n}-{uuid.uuid4().hex[:6]}@example.com") for n in range(4)]
    bad = write("nul\x00byte@example.com")  # PostgreSQL can't store a NUL in text
    outcomes = await asyncio.gather(
        *(firsts(w) for w in (good[0], good[1], bad, good[2], good[3])), return_exceptions=True
    )
    assert isinstance(outcomes[2], Exception)
    written = [o for n, o in enumerate(outcomes) if n != 2]
    assert all(isinstance(o, asyncpg.Record) for o in written)
    assert {o["id"] for o in written if isinstance(o, asyncpg.Record)} == {
        row.invitation_id for row, _, _ in good
    }
    for row, _, _ in good:
        assert [t for t, _ in await outbox_events(pool, str(row.invitation_id))] == [
            "invitation.created"
        ]
    assert await outbox_events(pool, str(bad[0].invitation_id)) == []


async def test_concurrent_look_ups_of_accounts_go_to_identity_together(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    one, many = Directory.find_user, Directory.find_user_ids

    async def find_user(self: Directory, email: str) -> Any:
        asked.append(1)
        if len(asked) == 1:
            await asyncio.sleep(0.3)  # the others queue up behind the first
        return await one(self, email)

    async def find_user_ids(self: Directory, emails: list[str]) -> Any:
        asked.append(len(emails))
        return await many(self, emails)

    monkeypatch.setattr(Directory, "find_user", find_user)
    monkeypatch.setattr(Directory, "find_user_ids", find_user_ids)
    portal = world.add_portal()
    members = [f"member-{uuid.uuid4().hex[:8]}@example.com" for _ in range(5)]
    for email in members:
        world.add_user(email, portal["id"])
    newcomers = [f"new-{uuid.uuid4().hex[:8]}@example.com" for _ in range(5)]
    answers = await asyncio.gather(
        *(_invite(client, portal["id"], email) for email in [*members, *newcomers])
    )
    for status, body in answers[:5]:
        assert status == 409 and body["error"]["code"] == "already_has_access"
    for status, body in answers[5:]:
        assert status == 201 and body["outcome"] == "created"
    assert max(asked) > 1 and sum(asked) == 10, asked
    world.identity_down = True
    try:
        down = await asyncio.gather(
            *(
                _invite(client, portal["id"], f"x-{n}-{uuid.uuid4().hex[:6]}@example.com")
                for n in range(3)
            )
        )
    finally:
        world.identity_down = False
    assert {status for status, _ in down} == {503}


async def test_the_first_look_answers_the_key_the_portal_and_the_setting_in_one_statement(
    pool: asyncpg.Pool, clock: Clock
) -> None:
    slug = f"look-{uuid.uuid4().hex[:8]}"
    older, newer = uuid.uuid4(), uuid.uuid4()
    # During a slug swap the replica holds both owners: the slug names the newer.
    await repo.upsert_portal(pool, PortalInfo(older, slug, "Older", "archived", 1))
    await repo.upsert_portal(pool, PortalInfo(newer, slug, "Newer", "active", 4))
    row, events, trace = first_write(older, f"look-{uuid.uuid4().hex[:6]}@example.com", clock())
    key = f"look-key-{uuid.uuid4().hex}"
    await repo.insert_firsts(pool, [(replace(row, idempotency_key=key), events, trace)], "first")
    days = await repo.expiry_days(pool)

    by_id = await repo.first_look(pool, key, older, None)
    assert by_id == repo.FirstLook(True, PortalInfo(older, slug, "Older", "archived", 1), days)
    by_slug = await repo.first_look(pool, f"new-{key}", None, slug)
    assert by_slug == repo.FirstLook(False, PortalInfo(newer, slug, "Newer", "active", 4), days)
    # The id decides when both are given; a portal the replica lacks is None.
    assert (await repo.first_look(pool, None, older, "other-slug")).portal == by_id.portal
    nowhere = await repo.first_look(pool, None, uuid.uuid4(), None)
    assert nowhere == repo.FirstLook(False, None, days)
    assert (await repo.first_look(pool, None, None, f"no-{slug}")).portal is None


async def test_a_first_invitation_reads_its_own_tables_once_before_it_is_written(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key, the portal and the expiry setting in one look; a retried key answers the
    invitation it made without checking again."""
    looks = only_first_looks(monkeypatch)
    portal = world.add_portal()
    key = f"once-{uuid.uuid4().hex}"
    email = f"once-{uuid.uuid4().hex[:8]}@example.com"
    first_status, first = await _invite(client, portal["id"], email, idempotency_key=key)
    again_status, again = await _invite(client, portal["id"], email, idempotency_key=key)
    # Replaying a key answers like the original request did.
    assert (first_status, again_status) == (201, 201)
    assert again["invitation"]["id"] == first["invitation"]["id"] and [
        key for key, _, _ in looks
    ] == [key, key]


async def test_a_shared_look_up_answers_by_its_callers_deadline(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look-up shared with other requests runs on no one's deadline (GroupCommit), so
    each request waits for it only until ANSWER_MARGIN before its own caller gives up
    (X-Request-Timeout), as its own calls do: an answer later than that would come after
    the gateway's 503, and the invitation made after it would be sent again on a retry."""

    async def find_user(self: Directory, email: str) -> Any:
        await asyncio.sleep(2)  # identity answering late
        return None

    monkeypatch.setattr(Directory, "find_user", find_user)
    directory = client.app[DEPS].directory
    set_deadline("1.5")
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await directory.find_user_id(f"late-{uuid.uuid4().hex[:8]}@example.com")
        assert time.monotonic() - started < 1.2
        set_deadline("0.3")  # too little left to ask at all
        with pytest.raises(Unavailable):
            await directory.find_user_id(f"late-{uuid.uuid4().hex[:8]}@example.com")
    finally:
        set_deadline(None)
    assert await directory.find_user_id(f"late-{uuid.uuid4().hex[:8]}@example.com") is None
