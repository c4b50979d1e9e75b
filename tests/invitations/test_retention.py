"""What invitations forget (INVITATIONS_RETENTION_DAYS): the Personal Message of an
invitation revoked or accepted some time ago; the invitation itself stays (its history),
and one that can still be resent keeps its message."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.invitations.api import DEPS
from services.invitations.handlers import clear_closed_once
from tests.invitations.conftest import Clock, World

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


async def _invite(client: Client, portal_id: str, message: str) -> dict[str, Any]:
    email = f"keep-{uuid.uuid4().hex[:10]}@example.com"
    response = await client.post(
        "/invitations",
        json={"portal_id": portal_id, "email": email, "personal_message": message},
    )
    assert response.status == 201, await response.text()
    invitation: dict[str, Any] = (await response.json())["invitation"]
    return invitation


async def _shown(client: Client, invitation_id: str) -> dict[str, Any]:
    response = await client.get(f"/invitations/{invitation_id}")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def _message(client: Client, invitation_id: str) -> str | None:
    message: str | None = (await _shown(client, invitation_id))["personal_message"]
    return message


async def test_a_closed_invitations_personal_message_is_cleared_after_the_retention(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    portal = world.add_portal()
    revoked = await _invite(client, portal["id"], "Jane, your new flat is at 12 Elm Street.")
    accepted = await _invite(client, portal["id"], "Ring me on 0151 555 0199.")
    pending = await _invite(client, portal["id"], "Still to be accepted.")
    assert (await client.post(f"/invitations/{revoked['id']}/revoke")).status == 200
    # As the accept saga ends (tests/invitations/test_accepting.py drives it in full).
    await pool.execute(
        "UPDATE invitations SET status = 'accepted', accepted_at = $2 WHERE id = $1",
        uuid.UUID(accepted["id"]),
        clock(),
    )
    deps = client.app[DEPS]

    clock.advance(days=29)
    await clear_closed_once(deps)
    assert await _message(client, revoked["id"]) is not None
    assert await _message(client, accepted["id"]) is not None

    clock.advance(days=2)
    cleared = await clear_closed_once(deps)
    assert cleared["personal_messages_cleared"] >= 2
    assert await _message(client, revoked["id"]) is None
    assert await _message(client, accepted["id"]) is None
    # A pending invitation's message goes out again with each Resend: kept.
    assert await _message(client, pending["id"]) == "Still to be accepted."
    # The history stays.
    assert (await _shown(client, revoked["id"]))["status"] == "revoked"
    assert (await _shown(client, accepted["id"]))["status"] == "accepted"
