"""An invitation closed or given a new link while its email still waits in the mailer
(queued, or waiting for a retry) withdraws that email: mail.withdraw on the private mail
exchange, written with the change, carrying mail ids only; the invitation shows the email
withdrawn rather than "Retrying" for ever."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.invitations.api import DEPS
from services.invitations.handlers import sweep_once
from tests.invitations.conftest import Clock, World

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


async def _invite(client: Client, world: World, email: str | None = None) -> dict[str, Any]:
    portal = world.add_portal()
    response = await client.post(
        "/invitations",
        json={"portal_id": portal["id"], "email": email or f"w-{uuid.uuid4().hex[:8]}@example.com"},
    )
    assert response.status == 201
    return dict((await response.json())["invitation"])


async def _retrying(pool: asyncpg.Pool, inv_id: str) -> uuid.UUID:
    """The invitation's email waits for a retry (as a mail.retrying would mark it); its id."""
    mail_id = await pool.fetchval(
        "UPDATE invitations SET delivery = 'retrying', delivery_error = 'smtp_deferred',"
        " delivery_next_attempt_at = now() + interval '5 minutes' WHERE id = $1"
        " RETURNING last_mail_id",
        uuid.UUID(inv_id),
    )
    assert mail_id is not None
    return uuid.UUID(str(mail_id))


async def _withdrawals(pool: asyncpg.Pool, mail_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT exchange, body FROM outbox WHERE routing_key = 'mail.withdraw'"
        " AND convert_from(body, 'UTF8') LIKE '%' || $1 || '%' ORDER BY seq",
        str(mail_id),
    )
    return [{"exchange": row["exchange"], "raw": bytes(row["body"])} for row in rows]


async def _get(client: Client, inv_id: str) -> dict[str, Any]:
    response = await client.get(f"/invitations/{inv_id}")
    return dict(await response.json())


async def test_revoke_withdraws_the_email_waiting_for_a_retry(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    invitation = await _invite(client, world)
    mail_id = await _retrying(pool, invitation["id"])

    response = await client.post(f"/invitations/{invitation['id']}/revoke")
    assert response.status == 200
    [withdrawal] = await _withdrawals(pool, mail_id)
    assert withdrawal["exchange"] == "mail"
    body = orjson.loads(withdrawal["raw"])
    assert body["data"] == {"mail_ids": [str(mail_id)]}
    # Mail ids only: no address, no link.
    assert invitation["email"].encode() not in withdrawal["raw"]
    assert b"token" not in withdrawal["raw"]
    shown = await _get(client, invitation["id"])
    assert shown["delivery"] == "withdrawn" and shown["delivery_next_attempt_at"] is None
    # Revoked again: nothing more.
    await client.post(f"/invitations/{invitation['id']}/revoke")
    assert len(await _withdrawals(pool, mail_id)) == 1


async def test_an_email_already_sent_is_not_withdrawn(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    invitation = await _invite(client, world)
    mail_id = await pool.fetchval(
        "UPDATE invitations SET delivery = 'sent' WHERE id = $1 RETURNING last_mail_id",
        uuid.UUID(invitation["id"]),
    )
    await client.post(f"/invitations/{invitation['id']}/revoke")
    assert await _withdrawals(pool, mail_id) == []
    assert (await _get(client, invitation["id"]))["delivery"] == "sent"


async def test_resend_withdraws_the_earlier_links_email(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    invitation = await _invite(client, world)
    old_mail = await _retrying(pool, invitation["id"])

    response = await client.post(f"/invitations/{invitation['id']}/resend")
    assert response.status == 200
    [withdrawal] = await _withdrawals(pool, old_mail)
    assert orjson.loads(withdrawal["raw"])["data"] == {"mail_ids": [str(old_mail)]}
    new_mail = await pool.fetchval(
        "SELECT last_mail_id FROM invitations WHERE id = $1", uuid.UUID(invitation["id"])
    )
    assert new_mail != old_mail and await _withdrawals(pool, new_mail) == []
    # The new link's email is the one shown.
    assert (await _get(client, invitation["id"]))["delivery"] == "queued"


async def test_expiry_withdraws_the_email_still_queued(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    invitation = await _invite(client, world)
    mail_id = await pool.fetchval(
        "SELECT last_mail_id FROM invitations WHERE id = $1", uuid.UUID(invitation["id"])
    )
    clock.advance(days=14, seconds=1)
    await sweep_once(client.app[DEPS])
    assert len(await _withdrawals(pool, mail_id)) == 1
    assert (await _get(client, invitation["id"]))["delivery"] == "withdrawn"


async def test_a_group_email_stays_while_another_invitation_of_it_is_pending(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portals = [world.add_portal(), world.add_portal()]
    response = await client.post(
        "/invitations/group",
        json={
            "portal_ids": [p["id"] for p in portals],
            "email": f"g-{uuid.uuid4().hex[:8]}@example.com",
        },
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    ids = [i["id"] for i in body["invitations"]]
    assert len(ids) == 2
    mail_id = await pool.fetchval(
        "UPDATE invitations SET delivery = 'retrying' WHERE id = ANY($1::uuid[])"
        " RETURNING last_mail_id",
        [uuid.UUID(i) for i in ids],
    )
    await client.post(f"/invitations/{ids[0]}/revoke")
    assert await _withdrawals(pool, mail_id) == []
    await client.post(f"/invitations/{ids[1]}/revoke")
    assert len(await _withdrawals(pool, mail_id)) == 1
    assert {(await _get(client, i))["delivery"] for i in ids} == {"withdrawn"}
