"""Staff invitations (Users → Invite Staff): a role and no portal, on the same machinery as a
client's invitation (one-time link, expiry, Resend, Revoke, caps, the accept claim), and
announced as invitation.staff.*, never invitation.* (whose portal_id stays a UUID)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.invitations.api import DEPS
from services.invitations.handlers import sweep_once
from tests.invitations.conftest import Clock, World, last_token, outbox_events
from tests.invitations.test_links import ask_new_link, validate

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def new_email() -> str:
    return f"staff-{uuid.uuid4().hex[:10]}@example.com"


async def invite_staff(client: Client, email: str, role: str = "staff") -> tuple[int, Any]:
    response = await client.post(
        "/staff-invitations", json={"email": email, "role": role, "invited_by": "dana@x.example"}
    )
    return response.status, await response.json()


async def created(client: Client, email: str, role: str = "staff") -> str:
    status, body = await invite_staff(client, email, role)
    assert status == 201, body
    return str(body["invitation"]["id"])


async def types(pool: asyncpg.Pool, inv_id: str) -> list[str]:
    return [t for t, _ in await outbox_events(pool, inv_id)]


async def test_a_staff_invitation_has_a_role_no_portal_and_its_own_events(
    client: Client, pool: asyncpg.Pool
) -> None:
    email = new_email()
    status, body = await invite_staff(client, email, "administrator")
    assert status == 201 and body["outcome"] == "created"
    invitation = body["invitation"]
    assert invitation["role"] == "administrator" and invitation["portal_id"] is None
    assert invitation["status"] == "pending" and invitation["invited_by"] == "dana@x.example"
    events = await outbox_events(pool, invitation["id"])
    assert [t for t, _ in events] == ["invitation.staff.created", "mail.requested"]
    announced = events[0][1]["data"]
    assert announced["role"] == "administrator" and "portal_id" not in announced
    mail = events[1][1]["data"]
    assert mail["template"] == "staff_invitation" and mail["to"] == email
    assert mail["context"]["role_name"] == "Administrator"
    assert mail["context"]["invited_by"] == "dana@x.example"
    # The Users screen lists it; the Invitations screen (client invitations) doesn't.
    listed = await (await client.get("/staff-invitations")).json()
    assert invitation["id"] in [i["id"] for i in listed["items"]]
    clients = await (await client.get("/invitations", params={"email": email})).json()
    assert clients["items"] == []
    counts = await (await client.get("/invitations/counts", params={"email": email})).json()
    assert counts["all"] == 0


async def test_bad_input_is_refused_with_a_reason(client: Client) -> None:
    status, body = await invite_staff(client, "not an address")
    assert status == 422 and body["error"]["code"] == "invalid_email"
    for role in ("client", "owner", ""):
        status, body = await invite_staff(client, new_email(), role)
        assert status == 422 and body["error"]["code"] == "invalid_role"
        assert body["error"]["message"] == "Choose a role: Administrator or Staff."


async def test_someone_already_on_the_team_is_not_invited_but_a_client_is(
    client: Client, world: World
) -> None:
    staff, admin, disabled = new_email(), new_email(), new_email()
    world.add_user(staff, role="staff")
    world.add_user(admin, role="administrator")
    world.add_user(disabled, role="staff", disabled=True)
    status, body = await invite_staff(client, staff, "staff")
    assert status == 409 and body["error"]["code"] == "already_on_team"
    assert (
        body["error"]["message"] == f"{staff} already has a Staff account; no invitation is needed."
    )
    # Never a silent downgrade: an Administrator can't be invited as Staff.
    status, body = await invite_staff(client, admin, "staff")
    assert status == 409 and "an Administrator account" in body["error"]["message"]
    status, body = await invite_staff(client, disabled, "staff")
    assert status == 409 and body["error"]["code"] == "account_disabled"
    # Staff may be invited to become an Administrator; a Client is invited as anyone is.
    assert (await invite_staff(client, staff, "administrator"))[0] == 201
    customer = new_email()
    world.add_user(customer, world.add_portal()["id"])
    assert (await invite_staff(client, customer, "staff"))[0] == 201


async def test_inviting_again_resends_with_the_role_given_now(
    client: Client, pool: asyncpg.Pool
) -> None:
    email = new_email()
    inv_id = await created(client, email, "staff")
    first = await last_token(pool, inv_id)
    status, body = await invite_staff(client, email.upper(), "administrator")
    assert status == 200 and body["outcome"] == "resent"
    assert body["invitation"]["id"] == inv_id and body["invitation"]["role"] == "administrator"
    assert await types(pool, inv_id) == [
        "invitation.staff.created",
        "mail.requested",
        "invitation.staff.resent",
        "mail.requested",
    ]
    status, answer = await validate(client, first)
    assert status == 410 and answer["error"]["code"] == "invitation_replaced"
    status, answer = await validate(client, await last_token(pool, inv_id))
    assert status == 200 and answer["role"] == "administrator"


async def test_accepting_announces_the_role_and_never_invitation_accepted(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    email = new_email()
    inv_id = await created(client, email)
    token = await last_token(pool, inv_id)
    status, shown = await validate(client, token)
    assert status == 200
    assert shown["role"] == "staff" and shown["portal_id"] is None
    assert shown["account_exists"] is False
    # What the link takes: no portal (null, never the string "None").
    assert [linked["portal_id"] for linked in shown["invitations"]] == [None]
    reserved = await client.post("/invitations/reserve", json={"token": token})
    assert reserved.status == 200
    claim = (await reserved.json())["claim"]
    # Spent: a revoke or resend from the Users screen comes too late.
    for action in ("revoke", "resend"):
        late = await client.post(f"/staff-invitations/{inv_id}/{action}")
        assert late.status == 409
    user_id = str(uuid.uuid4())
    accepted = await client.post(
        "/invitations/accept", json={"token": token, "claim": claim, "user_id": user_id}
    )
    assert accepted.status == 200 and (await accepted.json())["status"] == "accepted"
    events = await outbox_events(pool, inv_id)
    assert "invitation.accepted" not in [t for t, _ in events]
    last_type, last = events[-1]
    assert last_type == "invitation.staff.accepted"
    assert last["data"] == {
        "invitation_id": inv_id,
        "email": email,
        "role": "staff",
        "user_id": user_id,
    }
    status, answer = await validate(client, token)
    assert status == 409 and answer["error"]["code"] == "invitation_used"
    # Gone from the Users screen's list of open invitations.
    listed = await (await client.get("/staff-invitations")).json()
    assert inv_id not in [i["id"] for i in listed["items"]]


async def test_a_person_with_an_account_is_asked_to_log_in(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    email = new_email()
    world.add_user(email)  # a Client
    inv_id = await created(client, email)
    status, shown = await validate(client, await last_token(pool, inv_id))
    assert status == 200 and shown["account_exists"] is True


async def test_revoke_kills_the_link_and_each_screen_acts_on_its_own_kind(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    inv_id = await created(client, new_email())
    token = await last_token(pool, inv_id)
    # The Invitations screen's routes don't reach a staff invitation (Staff may use those).
    for action in ("revoke", "resend"):
        assert (await client.post(f"/invitations/{inv_id}/{action}")).status == 404
    assert (await client.get(f"/invitations/{inv_id}")).status == 404
    response = await client.post(f"/staff-invitations/{inv_id}/revoke")
    assert response.status == 200 and (await response.json())["status"] == "revoked"
    assert (await types(pool, inv_id))[-1] == "invitation.staff.revoked"
    status, answer = await validate(client, token)
    assert status == 410 and answer["error"]["code"] == "invitation_revoked"
    again = await client.post(f"/staff-invitations/{inv_id}/resend")
    assert again.status == 409 and (await again.json())["error"]["code"] == "invitation_revoked"
    # Nor do the Users screen's routes reach a client's invitation.
    portal = world.add_portal()
    client_inv = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": new_email()}
    )
    other = (await client_inv.json())["invitation"]["id"]
    assert (await client.post(f"/staff-invitations/{other}/revoke")).status == 404


async def test_resend_sends_a_new_link_within_the_caps(client: Client, pool: asyncpg.Pool) -> None:
    inv_id = await created(client, new_email())
    first = await last_token(pool, inv_id)
    response = await client.post(f"/staff-invitations/{inv_id}/resend")
    assert response.status == 200 and (await response.json())["send_count"] == 2
    assert (await types(pool, inv_id))[-2:] == ["invitation.staff.resent", "mail.requested"]
    status, answer = await validate(client, first)
    assert status == 410 and answer["error"]["code"] == "invitation_replaced"
    assert (await validate(client, await last_token(pool, inv_id)))[0] == 200
    # Five emails an hour per invitation (the first one included), as for clients.
    for _ in range(3):
        assert (await client.post(f"/staff-invitations/{inv_id}/resend")).status == 200
    capped = await client.post(f"/staff-invitations/{inv_id}/resend")
    assert capped.status == 429
    assert (await capped.json())["error"]["code"] == "send_rate_limited"


async def test_expiry_and_email_me_a_new_link(
    client: Client, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id = await created(client, new_email())
    token = await last_token(pool, inv_id)
    clock.advance(days=15)
    await sweep_once(client.app[DEPS])
    assert (await types(pool, inv_id))[-1] == "invitation.staff.expired"
    status, answer = await validate(client, token)
    assert status == 410 and answer["error"]["code"] == "invitation_expired"
    listed = await (await client.get("/staff-invitations")).json()
    shown = {i["id"]: i["status"] for i in listed["items"]}
    assert shown[inv_id] == "expired"
    # Email me a new link works without a portal to check.
    await ask_new_link(client, pool, token)
    mails = [e for t, e in await outbox_events(pool, inv_id) if t == "mail.requested"]
    assert len(mails) == 2 and mails[-1]["data"]["template"] == "staff_invitation"
    status, answer = await validate(client, await last_token(pool, inv_id))
    assert status == 200 and answer["role"] == "staff"


async def test_sixteen_concurrent_reserves_of_one_link_give_one_claim(
    client: Client, pool: asyncpg.Pool
) -> None:
    inv_id = await created(client, new_email(), "administrator")
    token = await last_token(pool, inv_id)
    responses = await asyncio.gather(
        *(client.post("/invitations/reserve", json={"token": token}) for _ in range(16))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 15
    claims = [(await r.json())["claim"] for r in responses if r.status == 200]
    user_id = str(uuid.uuid4())
    accepted = await client.post(
        "/invitations/accept", json={"token": token, "claim": claims[0], "user_id": user_id}
    )
    assert accepted.status == 200
    assert (await types(pool, inv_id)).count("invitation.staff.accepted") == 1
