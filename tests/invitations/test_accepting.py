"""An acceptance under way ('accepting'): the link is spent before any account or access
exists, so revoke, resend and the expiry sweep can't take it while its holder has the
lease; only the claim's holder finishes it, and the same link takes over from a holder
that failed or went quiet, within the link's life. Once the lease is over the sweep hands
the invitation back (pending) or, past the link's end, expires it."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.invitations.api import DEPS
from services.invitations.handlers import sweep_once
from tests.invitations.conftest import Clock, World, last_token, outbox_events

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


async def _invite(client: Client, world: World, pool: asyncpg.Pool) -> tuple[str, str]:
    portal = world.add_portal()
    response = await client.post(
        "/invitations",
        json={"portal_id": portal["id"], "email": f"a-{uuid.uuid4().hex[:8]}@example.com"},
    )
    assert response.status == 201
    inv_id = str((await response.json())["invitation"]["id"])
    return inv_id, await last_token(pool, inv_id)


async def _reserve(client: Client, token: str) -> tuple[int, Any]:
    response = await client.post("/invitations/reserve", json={"token": token})
    return response.status, await response.json()


async def _accept(client: Client, token: str, claim: str) -> tuple[int, Any]:
    response = await client.post(
        "/invitations/accept",
        json={"token": token, "claim": claim, "user_id": str(uuid.uuid4())},
    )
    return response.status, await response.json()


async def _status(pool: asyncpg.Pool, inv_id: str) -> str:
    value = await pool.fetchval("SELECT status FROM invitations WHERE id = $1", uuid.UUID(inv_id))
    return str(value)


async def test_a_spent_link_beats_revoke_resend_and_expiry(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id, token = await _invite(client, world, pool)
    clock.advance(days=14, seconds=-10)  # spent in the link's last seconds
    status, body = await _reserve(client, token)
    assert status == 200
    for action in ("revoke", "resend"):
        response = await client.post(f"/invitations/{inv_id}/{action}")
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "invitation_accepted"
    # The link's time runs out while the saga runs: the sweep leaves it alone, and the
    # holder still finishes in its lease (the link was spent in time).
    clock.advance(seconds=30)
    await sweep_once(client.app[DEPS])
    assert await _status(pool, inv_id) == "accepting"
    listed = await (await client.get("/invitations", params={"status": "accepted"})).json()
    assert inv_id in [i["id"] for i in listed["items"]]
    status, accepted = await _accept(client, token, body["claim"])
    assert status == 200 and accepted["status"] == "accepted"
    events = [t for t, _ in await outbox_events(pool, inv_id)]
    assert "invitation.accepted" in events
    assert "invitation.revoked" not in events and "invitation.expired" not in events


async def test_a_revoke_that_wins_leaves_the_link_dead(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    inv_id, token = await _invite(client, world, pool)
    assert (await client.post(f"/invitations/{inv_id}/revoke")).status == 200
    status, body = await _reserve(client, token)
    assert status == 410 and body["error"]["code"] == "invitation_revoked"
    assert await _status(pool, inv_id) == "revoked"


async def test_the_same_link_takes_over_after_the_lease_or_a_release(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id, token = await _invite(client, world, pool)
    _, first = await _reserve(client, token)
    # While the first request drives it, a second one with the link loses...
    status, body = await _reserve(client, token)
    assert status == 409 and body["error"]["code"] == "invitation_used"
    # ...but the form still shows: the same link can finish an unfinished acceptance.
    response = await client.get("/invitations/validate", params={"token": token})
    assert response.status == 200 and (await response.json())["account_exists"] is False

    clock.advance(seconds=61)  # the first request went quiet (a gateway that died)
    status, second = await _reserve(client, token)
    assert status == 200 and second["claim"] != first["claim"]
    status, body = await _accept(client, token, first["claim"])
    assert status == 409 and body["error"]["code"] == "invitation_used"
    # A failed holder lets go without reopening (the account may exist): taken over at once.
    response = await client.post(
        "/invitations/release", json={"token": token, "claim": second["claim"], "reopen": True}
    )
    assert response.status == 204
    assert await _status(pool, inv_id) == "accepting"  # a takeover never reopens
    status, third = await _reserve(client, token)
    assert status == 200
    status, _ = await _accept(client, token, third["claim"])
    assert status == 200
    # An old claim's release changes nothing.
    await client.post(
        "/invitations/release", json={"token": token, "claim": first["claim"], "reopen": True}
    )
    assert await _status(pool, inv_id) == "accepted"


async def test_a_refused_first_try_hands_the_invitation_back(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    inv_id, token = await _invite(client, world, pool)
    _, held = await _reserve(client, token)
    response = await client.post(
        "/invitations/release", json={"token": token, "claim": held["claim"], "reopen": True}
    )
    assert response.status == 204
    assert await _status(pool, inv_id) == "pending"
    # Pending again: the administrator can revoke it, and then the link is dead.
    assert (await client.post(f"/invitations/{inv_id}/revoke")).status == 200
    status, body = await _reserve(client, token)
    assert status == 410 and body["error"]["code"] == "invitation_revoked"


async def test_a_stalled_acceptance_cant_be_taken_over_after_the_links_expiry(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    """The invitations process died mid-accept: months later, a link found in a mailbox
    sets no password (treat every secret as leaked once written down)."""
    inv_id, token = await _invite(client, world, pool)
    status, _ = await _reserve(client, token)
    assert status == 200
    clock.advance(days=90)
    response = await client.get("/invitations/validate", params={"token": token})
    assert response.status == 410
    assert (await response.json())["error"]["code"] == "invitation_expired"
    status, body = await _reserve(client, token)
    assert status == 410 and body["error"]["code"] == "invitation_expired"
    assert await _status(pool, inv_id) == "accepting"  # nothing taken over


async def test_the_sweep_hands_a_stalled_acceptance_back(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    """The holder died (or identity's answer timed out) and no one retried: once its
    lease is over the invitation is pending again, as the client has no access: listed
    as pending, revocable and resendable; the same link still takes it."""
    inv_id, token = await _invite(client, world, pool)
    _, held = await _reserve(client, token)
    clock.advance(seconds=61)
    await sweep_once(client.app[DEPS])
    # Left for a retry a while: the same link finishes it through the set-password form.
    assert await _status(pool, inv_id) == "accepting"
    clock.advance(minutes=10)
    await sweep_once(client.app[DEPS])
    assert await _status(pool, inv_id) == "pending"
    listed = await (await client.get("/invitations", params={"status": "pending"})).json()
    assert inv_id in [i["id"] for i in listed["items"]]
    # The late holder can't finish any more; the same link can.
    status, body = await _accept(client, token, held["claim"])
    assert status == 409 and body["error"]["code"] == "invitation_used"
    status, again = await _reserve(client, token)
    assert status == 200
    clock.advance(minutes=12)
    await sweep_once(client.app[DEPS])
    assert (await client.post(f"/invitations/{inv_id}/revoke")).status == 200
    status, body = await _reserve(client, token)
    assert status == 410 and body["error"]["code"] == "invitation_revoked"
    status, body = await _accept(client, token, again["claim"])
    assert status == 409 and await _status(pool, inv_id) == "revoked"
    events = [t for t, _ in await outbox_events(pool, inv_id)]
    assert "invitation.accepted" not in events


async def test_the_sweep_expires_a_stalled_acceptance_past_its_link(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id, token = await _invite(client, world, pool)
    await _reserve(client, token)
    clock.advance(days=15)
    await sweep_once(client.app[DEPS])
    assert await _status(pool, inv_id) == "expired"
    events = [t for t, _ in await outbox_events(pool, inv_id)]
    assert events.count("invitation.expired") == 1
    listed = await (await client.get("/invitations", params={"status": "expired"})).json()
    assert inv_id in [i["id"] for i in listed["items"]]
    # As any expired invitation: a Resend sends a new link that works.
    assert (await client.post(f"/invitations/{inv_id}/resend")).status == 200
    status, _ = await _reserve(client, await last_token(pool, inv_id))
    assert status == 200


async def test_a_stalled_acceptance_is_expired_when_a_newer_invitation_is_pending(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    """Handing it back would make two pending invitations to one person and portal: the
    newer one stands, and the stalled one ends as expired."""
    portal = world.add_portal()
    email = f"n-{uuid.uuid4().hex[:8]}@example.com"
    first = await client.post("/invitations", json={"portal_id": portal["id"], "email": email})
    inv_id = str((await first.json())["invitation"]["id"])
    await _reserve(client, await last_token(pool, inv_id))
    newer = await client.post("/invitations", json={"portal_id": portal["id"], "email": email})
    assert newer.status == 201
    clock.advance(minutes=12)
    await sweep_once(client.app[DEPS])
    assert await _status(pool, inv_id) == "expired"
    assert await _status(pool, str((await newer.json())["invitation"]["id"])) == "pending"
