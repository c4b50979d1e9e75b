"""Every rule that can race, forced with concurrent calls on the real database."""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.events import InvitationRequested, make_event
from services.invitations import repository as repo
from tests.invitations.conftest import World, last_token, outbox_events, requested_handler

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


async def _invite(client: Client, world: World) -> str:
    portal = world.add_portal()
    response = await client.post(
        "/invitations",
        json={"portal_id": portal["id"], "email": f"r-{uuid.uuid4().hex[:8]}@example.com"},
    )
    assert response.status == 201
    return str((await response.json())["invitation"]["id"])


async def test_sixteen_concurrent_accepts_one_wins(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    inv_id = await _invite(client, world)
    token = await last_token(pool, inv_id)

    async def accept() -> tuple[int, str | None]:
        response = await client.post("/invitations/reserve", json={"token": token})
        body = await response.json()
        if response.status != 200:
            return response.status, body.get("error", {}).get("code")
        response = await client.post(
            "/invitations/accept",
            json={"token": token, "claim": body["claim"], "user_id": str(uuid.uuid4())},
        )
        return response.status, None

    results = await asyncio.gather(*(accept() for _ in range(16)))
    assert Counter(results) == {(200, None): 1, (409, "invitation_used"): 15}
    events = [t for t, _ in await outbox_events(pool, inv_id)]
    assert events.count("invitation.accepted") == 1


async def test_resend_racing_accept(client: Client, world: World, pool: asyncpg.Pool) -> None:
    for _ in range(5):
        inv_id = await _invite(client, world)
        token = await last_token(pool, inv_id)
        accept, resend = await asyncio.gather(
            client.post("/invitations/reserve", json={"token": token}),
            client.post(f"/invitations/{inv_id}/resend"),
        )
        row = await pool.fetchrow(
            "SELECT status, send_count FROM invitations WHERE id = $1", uuid.UUID(inv_id)
        )
        assert row is not None
        if accept.status == 200:
            # The acceptance won: the resend saw a spent link.
            assert resend.status == 409
            assert (await resend.json())["error"]["code"] == "invitation_accepted"
            assert row["status"] == "accepting" and row["send_count"] == 1
        else:
            # Resend won: the old link died (it says it was replaced) before the accept got
            # to it.
            assert resend.status == 200
            assert accept.status == 410
            assert (await accept.json())["error"]["code"] == "invitation_replaced"
            assert row["status"] == "pending" and row["send_count"] == 2


async def test_sixteen_concurrent_invites_of_one_person(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    email = f"same-{uuid.uuid4().hex[:8]}@example.com"
    responses = await asyncio.gather(
        *(
            client.post("/invitations", json={"portal_id": portal["id"], "email": email})
            for _ in range(16)
        )
    )
    statuses = Counter(r.status for r in responses)
    # One invitation; it is emailed at most 5 times an hour (the default cap, counted
    # under the invitation's lock, so exactly): four resends, eleven refusals.
    assert statuses == {201: 1, 200: 4, 429: 11}
    count = await pool.fetchval(
        "SELECT count(*) FROM invitations WHERE portal_id = $1", uuid.UUID(portal["id"])
    )
    assert count == 1
    links = await pool.fetchval(
        "SELECT count(*) FROM invitation_links l JOIN invitations i ON i.id = l.invitation_id"
        " WHERE i.portal_id = $1",
        uuid.UUID(portal["id"]),
    )
    assert links == 5


async def test_same_request_twice_at_once_makes_one_invitation(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    handler = requested_handler(client)
    # Several rounds: the losing delivery can look in any of the gaps between the winner's
    # statements (key lookup, pending lookup, insert), and each must end the same way.
    for _ in range(8):
        portal = world.add_portal()
        key = f"crm-{uuid.uuid4().hex}"
        data = InvitationRequested(
            portal_id=uuid.UUID(portal["id"]), email="crm@example.com", idempotency_key=key
        )
        # Different envelope ids: the inbox can't dedupe them, the idempotency key must.
        envelopes = [make_event("invitation.requested", data, source="crm") for _ in range(16)]

        async def deliver(envelope: object, data: InvitationRequested = data) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await handler(conn, envelope, data)  # type: ignore[arg-type]

        await asyncio.gather(*(deliver(e) for e in envelopes))
        rows = await pool.fetch(
            "SELECT id, send_count FROM invitations WHERE idempotency_key = $1", key
        )
        assert len(rows) == 1 and rows[0]["send_count"] == 1
        events = [t for t, _ in await outbox_events(pool, str(rows[0]["id"]))]
        # One invitation and one email; every delivery is answered (repeats re-announce
        # the same invitation id, so each sender hears back under its own correlation id).
        assert events.count("mail.requested") == 1
        assert events.count("invitation.resent") == 0
        assert events.count("invitation.created") == 16


async def test_same_key_committing_between_the_losers_two_looks(
    client: Client, world: World, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrow interleaving, forced: the loser looks the key up while the winner's row
    is uncommitted (and finds nothing), then the winner commits, then the loser writes
    (its insert meets the winner's row) and looks again. It must answer as a repeat, not
    resend the winner's invitation."""
    portal = world.add_portal()
    # Someone else's invitation first, so the portal is in the replica before the race
    # (otherwise the loser waits on the winner's replica row and can't look in between).
    warm = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": "first@example.com"}
    )
    assert warm.status == 201
    key = f"crm-{uuid.uuid4().hex}"
    data = InvitationRequested(
        portal_id=uuid.UUID(portal["id"]), email="narrow@example.com", idempotency_key=key
    )
    handler = requested_handler(client)
    inserted, loser_looked, committed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    loser = contextvars.ContextVar("loser", default=False)
    real_first_look = repo.first_look

    async def first_look(conn: Any, looked_for: str | None, *portal: Any) -> Any:
        found = await real_first_look(conn, looked_for, *portal)
        if loser.get() and not loser_looked.is_set():
            assert not found.key_taken  # the winner's row is not committed yet
            loser_looked.set()
            await committed.wait()
        return found

    monkeypatch.setattr(repo, "first_look", first_look)

    async def winner() -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                await handler(conn, make_event("invitation.requested", data, source="crm"), data)
                inserted.set()
                await loser_looked.wait()
            committed.set()

    async def losing() -> None:
        loser.set(True)
        await inserted.wait()
        async with pool.acquire() as conn, conn.transaction():
            await handler(conn, make_event("invitation.requested", data, source="crm"), data)

    await asyncio.wait_for(asyncio.gather(winner(), losing()), 10)
    rows = await pool.fetch(
        "SELECT id, send_count FROM invitations WHERE idempotency_key = $1", key
    )
    assert len(rows) == 1 and rows[0]["send_count"] == 1
    events = [t for t, _ in await outbox_events(pool, str(rows[0]["id"]))]
    assert events.count("mail.requested") == 1
    assert events.count("invitation.created") == 2
