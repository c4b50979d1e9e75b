"""An erased person (identity.user.erased) in invitations: their open invitations are
revoked, and no column of the schema keeps their address, name or Personal Message; the
history stays and the address can be invited again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.invitations.api import DEPS
from services.invitations.domain import ERASED_EMAIL
from services.invitations.handlers import erase_person, sweep_once
from tests.invitations.conftest import Clock, World, last_token, outbox_events
from tests.support.erasure import places_naming

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


async def _invite(client: Client, portal_id: str, email: str, **more: Any) -> dict[str, Any]:
    response = await client.post(
        "/invitations", json={"portal_id": portal_id, "email": email, **more}
    )
    assert response.status == 201, await response.text()
    invitation: dict[str, Any] = (await response.json())["invitation"]
    return invitation


async def test_an_erased_persons_invitations_keep_no_address_and_the_open_ones_are_revoked(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    name = f"Erin{uuid.uuid4().hex[:8]}"
    email = f"{name}@Example.com"
    first, second = world.add_portal(), world.add_portal()
    accepted = await _invite(client, first["id"], email, personal_message="Ring me on 0151.")
    pending = await _invite(
        client, second["id"], email, personal_message="Your flat at 12 Elm St.", name=name
    )
    user_id = uuid.uuid4()
    # As the accept saga ends (tests/invitations/test_accepting.py drives it in full).
    await pool.execute(
        "UPDATE invitations SET status = 'accepted', accepted_at = now(), accepted_user_id = $2,"
        " delivery_error = $3 WHERE id = $1",
        uuid.UUID(accepted["id"]),
        user_id,
        f"550 5.1.1 <{email.lower()}>: mailbox full",
    )
    await pool.execute(
        "UPDATE invitations SET invited_by = $1 WHERE id = $2",
        email.lower(),
        uuid.UUID(pending["id"]),
    )
    async with pool.acquire() as conn:
        before = await places_naming(conn, "invitations", email)
        assert "outbox.body" in before and "invitations.email" in before, before
    deps = client.app[DEPS]

    erased_at = datetime.now(UTC)
    assert await erase_person(deps, user_id, erased_at) == 2
    assert await erase_person(deps, user_id, erased_at) == 0  # a redelivery: nothing to do

    async with pool.acquire() as conn:
        assert await places_naming(conn, "invitations", email) == []
        assert await places_naming(conn, "invitations", name) == []
        assert await places_naming(conn, "invitations", "Elm St") == []
    shown = await (await client.get(f"/invitations/{pending['id']}")).json()
    assert shown["status"] == "revoked" and shown["email"] == ERASED_EMAIL
    assert (await (await client.get(f"/invitations/{accepted['id']}")).json())[
        "status"
    ] == "accepted"
    revoked = [d for t, d in await outbox_events(pool, pending["id"]) if t == "invitation.revoked"]
    assert [d["data"]["email"] for d in revoked] == [ERASED_EMAIL]

    # The address is free: a new invitation to it is a new person's.
    again = await _invite(client, second["id"], email, name="Another Erin")
    assert again["status"] == "pending" and again["email"].lower() == email.lower()


async def test_an_erasure_applied_late_leaves_a_new_person_at_the_address_alone(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    email = f"late-{uuid.uuid4().hex[:8]}@example.com"
    portal = world.add_portal()
    old = await _invite(client, portal["id"], email)
    user_id = uuid.uuid4()
    await pool.execute(
        "UPDATE invitations SET status = 'accepted', accepted_at = now(), accepted_user_id = $2"
        " WHERE id = $1",
        uuid.UUID(old["id"]),
        user_id,
    )
    erased_at = datetime.now(UTC)
    # Invited again before the erasure reached this service (its consumer was behind).
    new = await _invite(client, portal["id"], email)

    await erase_person(client.app[DEPS], user_id, erased_at)

    kept = await (await client.get(f"/invitations/{new['id']}")).json()
    assert kept["status"] == "pending" and kept["email"] == email
    gone = await (await client.get(f"/invitations/{old['id']}")).json()
    assert gone["email"] == ERASED_EMAIL


async def test_an_erasure_ends_an_acceptance_under_way(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    """An acceptance of one of the person's invitations that never finished (its holder
    died): erased, it is revoked, so no sweep hands it back as a pending invitation to the
    erased address, and its link takes nothing any more."""
    email = f"midway-{uuid.uuid4().hex[:8]}@example.com"
    first, second = world.add_portal(), world.add_portal()
    accepted = await _invite(client, first["id"], email)
    user_id = uuid.uuid4()
    await pool.execute(
        "UPDATE invitations SET status = 'accepted', accepted_at = now(), accepted_user_id = $2"
        " WHERE id = $1",
        uuid.UUID(accepted["id"]),
        user_id,
    )
    midway = await _invite(client, second["id"], email)
    token = await last_token(pool, midway["id"])
    assert (await client.post("/invitations/reserve", json={"token": token})).status == 200

    await erase_person(client.app[DEPS], user_id, datetime.now(UTC))
    clock.advance(minutes=11)  # its holder died: past the lease and a retry's time
    await sweep_once(client.app[DEPS])

    shown = await (await client.get(f"/invitations/{midway['id']}")).json()
    assert shown["status"] == "revoked" and shown["email"] == ERASED_EMAIL
    response = await client.post("/invitations/reserve", json={"token": token})
    assert response.status == 410
    assert (await response.json())["error"]["code"] == "invitation_revoked"
    revoked = [d for t, d in await outbox_events(pool, midway["id"]) if t == "invitation.revoked"]
    assert [d["data"]["email"] for d in revoked] == [ERASED_EMAIL]
