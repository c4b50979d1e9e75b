"""An invitation closed or given a new link while its email still waits in the mailer
(queued, or waiting for a retry) withdraws that email: mail.withdraw on the private mail
exchange, written with the change, carrying mail ids only; the invitation shows the email
withdrawn rather than "Retrying" for ever."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.events import UserDisabled, make_event
from services.invitations.api import DEPS
from services.invitations.consumer import HANDLERS
from services.invitations.handlers import erase_person, remind_once, sweep_once
from tests.invitations.conftest import Clock, World, last_token

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


async def test_the_reminders_new_link_withdraws_the_earlier_email(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    await client.put("/settings/access", json={"invitation_reminder_days": 1})
    try:
        invitation = await _invite(client, world)
        mail_id = await _retrying(pool, invitation["id"])
        clock.advance(days=13, minutes=1)
        await remind_once(client.app[DEPS])
    finally:
        await pool.execute("UPDATE settings SET invitation_reminder_days = 0")
    assert len(await _withdrawals(pool, mail_id)) == 1
    assert (await _get(client, invitation["id"]))["delivery"] == "queued"  # the reminder's


async def test_accepting_withdraws_an_email_of_the_link_still_waiting(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    invitation = await _invite(client, world)
    mail_id = await _retrying(pool, invitation["id"])
    token = await last_token(pool, invitation["id"])
    response = await client.post("/invitations/reserve", json={"token": token})
    assert response.status == 200, await response.text()
    claim = (await response.json())["claim"]
    response = await client.post(
        "/invitations/accept",
        json={"token": token, "claim": claim, "user_id": str(uuid.uuid4())},
    )
    assert response.status == 200, await response.text()
    assert len(await _withdrawals(pool, mail_id)) == 1


async def test_a_revoked_or_resent_staff_invitations_email_is_withdrawn(
    client: Client, pool: asyncpg.Pool
) -> None:
    ids = []
    for _ in range(2):
        response = await client.post(
            "/staff-invitations",
            json={"email": f"st-{uuid.uuid4().hex[:8]}@example.com", "role": "staff"},
        )
        assert response.status == 201, await response.text()
        ids.append((await response.json())["invitation"]["id"])
    revoked_mail, resent_mail = [await _retrying(pool, i) for i in ids]
    assert (await client.post(f"/staff-invitations/{ids[0]}/revoke")).status == 200
    assert (await client.post(f"/staff-invitations/{ids[1]}/resend")).status == 200
    assert len(await _withdrawals(pool, revoked_mail)) == 1
    assert len(await _withdrawals(pool, resent_mail)) == 1


async def test_a_staff_invitation_revoked_with_its_senders_right_withdraws_its_email(
    client: Client, pool: asyncpg.Pool
) -> None:
    sender = uuid.uuid4()
    response = await client.post(
        "/staff-invitations",
        json={
            "email": f"ss-{uuid.uuid4().hex[:8]}@example.com",
            "role": "administrator",
            "invited_by": "dana@x.example",
            "invited_by_id": str(sender),
        },
    )
    assert response.status == 201, await response.text()
    inv_id = (await response.json())["invitation"]["id"]
    mail_id = await _retrying(pool, inv_id)
    data = UserDisabled(user_id=sender)
    envelope = make_event("identity.user.disabled", data, source="identity")
    await HANDLERS["identity.user.disabled"](client.app[DEPS], envelope, data)
    assert len(await _withdrawals(pool, mail_id)) == 1


async def test_an_erasure_withdraws_the_erased_persons_waiting_emails(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    email = f"erin-{uuid.uuid4().hex[:8]}@example.com"
    accepted = await _invite(client, world, email)
    pending = await _invite(client, world, email)
    user_id = uuid.uuid4()
    await pool.execute(
        "UPDATE invitations SET status = 'accepted', accepted_at = now(), accepted_user_id = $2,"
        " delivery = 'sent' WHERE id = $1",
        uuid.UUID(accepted["id"]),
        user_id,
    )
    mail_id = await _retrying(pool, pending["id"])
    await erase_person(client.app[DEPS], user_id, datetime.now(UTC))
    [withdrawal] = await _withdrawals(pool, mail_id)
    assert email.encode() not in withdrawal["raw"]
    assert (await _get(client, pending["id"]))["delivery"] == "withdrawn"
