"""Several portals, one invitation (issue 20), on the real database with the fake
identity and portals: one email and one link for several portals; accepting it accepts
each invitation still pending whose portal is still Active (an Archived portal in
between blocks nothing); revoking one leaves the others on the link; a Resend sends the
group's link again; a retried request sends nothing twice."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.events import MailSent
from services.invitations import consumer
from services.invitations.api import DEPS
from services.invitations.handlers import remind_once
from tests.invitations.conftest import Clock, World, outbox_events

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def new_email() -> str:
    return f"group-{uuid.uuid4().hex[:10]}@example.com"


async def invite_group(
    client: Client, portal_ids: list[str], email: str, **extra: Any
) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/invitations/group", json={"email": email, "portal_ids": portal_ids, **extra}
    )
    return response.status, await response.json()


async def group_mails(pool: asyncpg.Pool, group_id: str) -> list[dict[str, Any]]:
    """The mail jobs written for the group (its one email, then each new link)."""
    return [e["data"] for t, e in await outbox_events(pool, group_id) if t == "mail.requested"]


def token_of(mail: dict[str, Any]) -> str:
    return str(mail["context"]["accept_url"].split("token=", 1)[1])


async def validate(client: Client, token: str) -> tuple[int, dict[str, Any]]:
    response = await client.get("/invitations/validate", params={"token": token})
    return response.status, await response.json()


async def accept(client: Client, token: str) -> tuple[int, dict[str, Any]]:
    """Reserve, then accept for a new account: the gateway's saga, minus the account."""
    response = await client.post("/invitations/reserve", json={"token": token})
    if response.status != 200:
        return response.status, await response.json()
    claim = (await response.json())["claim"]
    response = await client.post(
        "/invitations/accept",
        json={"token": token, "claim": claim, "user_id": str(uuid.uuid4())},
    )
    return response.status, await response.json()


async def status_of(client: Client, invitation_id: str) -> str:
    return str((await (await client.get(f"/invitations/{invitation_id}")).json())["status"])


def archive(world: World, portal: dict[str, Any]) -> None:
    """As the portals service would answer after an administrator archived the portal."""
    portal["status"] = "archived"
    portal["revision"] += 1


async def test_one_email_one_link_for_several_portals(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    acme = world.add_portal(title="Acme Rebrand")
    beta = world.add_portal(title="Beta Launch")
    email = new_email()
    status, body = await invite_group(
        client, [acme["id"], beta["id"]], email, personal_message="Both projects, one login."
    )
    assert status == 201, body
    group_id = body["group_id"]
    assert [i["portal_id"] for i in body["invitations"]] == [acme["id"], beta["id"]]
    assert {i["group_id"] for i in body["invitations"]} == {group_id}
    assert {i["status"] for i in body["invitations"]} == {"pending"}
    assert {i["personal_message"] for i in body["invitations"]} == {"Both projects, one login."}
    # One invitation per portal, each announced; one email naming both.
    for invitation in body["invitations"]:
        created = [
            e for t, e in await outbox_events(pool, invitation["id"]) if t == "invitation.created"
        ]
        assert [e["data"]["group_id"] for e in created] == [group_id]
    [mail] = await group_mails(pool, group_id)
    assert mail["to"] == email and mail["ref_type"] == "invitation_group"
    assert mail["context"]["portal_title"] == "Acme Rebrand and Beta Launch"
    assert mail["context"]["portal_titles"] == '["Acme Rebrand", "Beta Launch"]'
    hashes = await pool.fetch(
        "SELECT DISTINCT token_hash FROM invitations WHERE group_id = $1", uuid.UUID(group_id)
    )
    assert len(hashes) == 1  # one link for both
    status, link = await validate(client, token_of(mail))
    assert status == 200 and link["group_id"] == group_id
    assert [i["portal_title"] for i in link["invitations"]] == ["Acme Rebrand", "Beta Launch"]


async def test_accepting_once_accepts_every_portal(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portals = [world.add_portal() for _ in range(3)]
    status, body = await invite_group(client, [p["id"] for p in portals], new_email())
    assert status == 201
    [mail] = await group_mails(pool, body["group_id"])
    status, accepted = await accept(client, token_of(mail))
    assert status == 200, accepted
    assert {i["portal_id"] for i in accepted["invitations"]} == {p["id"] for p in portals}
    for invitation in body["invitations"]:
        assert await status_of(client, invitation["id"]) == "accepted"
        events = [
            e for t, e in await outbox_events(pool, invitation["id"]) if t == "invitation.accepted"
        ]
        assert [e["data"]["portal_id"] for e in events] == [invitation["portal_id"]]
    status, again = await validate(client, token_of(mail))
    assert (status, again["error"]["code"]) == (409, "invitation_used")


async def test_a_portal_archived_in_between_blocks_nothing(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    acme, beta, gamma = (world.add_portal() for _ in range(3))
    email = new_email()
    status, body = await invite_group(client, [acme["id"], beta["id"], gamma["id"]], email)
    assert status == 201
    by_portal = {i["portal_id"]: i["id"] for i in body["invitations"]}
    [mail] = await group_mails(pool, body["group_id"])
    token = token_of(mail)
    archive(world, beta)  # the replica doesn't know yet: validate and reserve ask portals

    status, link = await validate(client, token)
    assert status == 200
    assert [i["portal_id"] for i in link["invitations"]] == [acme["id"], gamma["id"]]
    status, accepted = await accept(client, token)
    assert status == 200
    assert {i["portal_id"] for i in accepted["invitations"]} == {acme["id"], gamma["id"]}
    assert await status_of(client, by_portal[acme["id"]]) == "accepted"
    assert await status_of(client, by_portal[gamma["id"]]) == "accepted"
    # The archived portal's invitation is left as it was, and no access was announced.
    assert await status_of(client, by_portal[beta["id"]]) == "pending"
    beta_events = [t for t, _ in await outbox_events(pool, by_portal[beta["id"]])]
    assert "invitation.accepted" not in beta_events

    # Active again before the link expires: the same link, used again, takes it (the
    # person has an account now: the page asks them to log in).
    beta["status"] = "active"
    beta["revision"] += 1
    world.add_user(email, acme["id"], gamma["id"])
    status, link = await validate(client, token)
    assert status == 200 and link["account_exists"] is True
    assert [i["portal_id"] for i in link["invitations"]] == [beta["id"]]
    status, accepted = await accept(client, token)
    assert status == 200 and [i["portal_id"] for i in accepted["invitations"]] == [beta["id"]]


async def test_no_portal_left_active_says_so(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    acme, beta = world.add_portal(), world.add_portal()
    status, body = await invite_group(client, [acme["id"], beta["id"]], new_email())
    [mail] = await group_mails(pool, body["group_id"])
    archive(world, acme)
    archive(world, beta)
    status, link = await validate(client, token_of(mail))
    assert (status, link["error"]["code"]) == (409, "portal_not_active")
    status, reserved = await accept(client, token_of(mail))
    assert (status, reserved["error"]["code"]) == (409, "portal_not_active")
    for invitation in body["invitations"]:
        assert await status_of(client, invitation["id"]) == "pending"


async def test_revoking_one_leaves_the_others_on_the_link(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    acme, beta = world.add_portal(), world.add_portal()
    status, body = await invite_group(client, [acme["id"], beta["id"]], new_email())
    first, second = body["invitations"]
    [mail] = await group_mails(pool, body["group_id"])
    response = await client.post(f"/invitations/{second['id']}/revoke")
    assert response.status == 200
    status, link = await validate(client, token_of(mail))
    assert status == 200 and [i["invitation_id"] for i in link["invitations"]] == [first["id"]]
    status, accepted = await accept(client, token_of(mail))
    assert status == 200 and [i["invitation_id"] for i in accepted["invitations"]] == [first["id"]]
    assert await status_of(client, second["id"]) == "revoked"
    revoked = [e for t, e in await outbox_events(pool, second["id"]) if t == "invitation.revoked"]
    assert [e["data"]["group_id"] for e in revoked] == [body["group_id"]]


async def test_every_one_revoked_says_revoked(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    status, body = await invite_group(
        client, [world.add_portal()["id"] for _ in range(2)], new_email()
    )
    [mail] = await group_mails(pool, body["group_id"])
    for invitation in body["invitations"]:
        assert (await client.post(f"/invitations/{invitation['id']}/revoke")).status == 200
    status, link = await validate(client, token_of(mail))
    assert (status, link["error"]["code"]) == (410, "invitation_revoked")


async def test_a_resend_of_one_sends_the_groups_link_again(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    acme = world.add_portal(title="Acme")
    beta = world.add_portal(title="Beta")
    gamma = world.add_portal(title="Gamma")
    status, body = await invite_group(client, [acme["id"], beta["id"], gamma["id"]], new_email())
    first, second, third = body["invitations"]
    [mail] = await group_mails(pool, body["group_id"])
    assert (await client.post(f"/invitations/{third['id']}/revoke")).status == 200

    response = await client.post(f"/invitations/{first['id']}/resend")
    assert response.status == 200
    [_, again] = await group_mails(pool, body["group_id"])
    assert again["context"]["portal_titles"] == '["Acme", "Beta"]'  # not the revoked one
    status, old = await validate(client, token_of(mail))
    assert (status, old["error"]["code"]) == (410, "invitation_replaced")  # only the latest
    status, link = await validate(client, token_of(again))
    assert status == 200
    assert {i["invitation_id"] for i in link["invitations"]} == {first["id"], second["id"]}
    for invitation in (first, second):
        resent = [
            e for t, e in await outbox_events(pool, invitation["id"]) if t == "invitation.resent"
        ]
        assert [e["data"]["group_id"] for e in resent] == [body["group_id"]]
    assert await status_of(client, third["id"]) == "revoked"


async def test_a_retried_request_sends_one_email(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    acme, beta = world.add_portal(), world.add_portal()
    email, key = new_email(), f"crm-{uuid.uuid4().hex}"
    ids = [acme["id"], beta["id"]]
    status, first = await invite_group(client, ids, email, idempotency_key=key)
    assert status == 201
    status, again = await invite_group(client, ids, email.upper(), idempotency_key=key)
    assert status == 201
    assert again["group_id"] == first["group_id"]
    assert [i["id"] for i in again["invitations"]] == [i["id"] for i in first["invitations"]]
    assert len(await group_mails(pool, first["group_id"])) == 1
    assert {i["send_count"] for i in again["invitations"]} == {1}
    # The key's events carry it, for each portal.
    for invitation in first["invitations"]:
        created = [
            e for t, e in await outbox_events(pool, invitation["id"]) if t == "invitation.created"
        ]
        assert [e["data"]["idempotency_key"] for e in created] == [key]
    # The key with other portals, or on the one-portal route, names another request.
    status, reused = await invite_group(client, [acme["id"]], email, idempotency_key=key)
    assert (status, reused["error"]["code"]) == (409, "idempotency_key_reused")
    response = await client.post(
        "/invitations",
        json={"portal_id": world.add_portal()["id"], "email": email, "idempotency_key": key},
    )
    assert (response.status, (await response.json())["error"]["code"]) == (
        409,
        "idempotency_key_reused",
    )


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("duplicate", 422, "duplicate_portal"),
        ("too_many", 422, "too_many_portals"),
        ("none", 422, "no_portals"),
        ("unknown", 404, "portal_not_found"),
        ("pending_portal", 409, "portal_not_active"),
        ("has_access", 409, "already_has_access"),
        ("already_pending", 409, "invitation_pending"),
    ],
)
async def test_refusals_name_the_portal(
    client: Client, world: World, pool: asyncpg.Pool, case: str, status: int, code: str
) -> None:
    email = new_email()
    acme = world.add_portal(title="Acme")
    other = world.add_portal(title="Other")
    ids = [acme["id"], other["id"]]
    if case == "duplicate":
        ids = [acme["id"], acme["id"]]
    elif case == "too_many":
        ids = [world.add_portal()["id"] for _ in range(21)]
    elif case == "none":
        ids = []
    elif case == "unknown":
        ids = [acme["id"], str(uuid.uuid4())]
    elif case == "pending_portal":
        other.update(status="pending", revision=2)
    elif case == "has_access":
        world.add_user(email, other["id"])
    elif case == "already_pending":
        response = await client.post(
            "/invitations", json={"portal_id": other["id"], "email": email}
        )
        assert response.status == 201
    answered, body = await invite_group(client, ids, email)
    assert (answered, body["error"]["code"]) == (status, code)
    if case in ("pending_portal", "has_access", "already_pending"):
        assert "'Other'" in body["error"]["message"]
        assert body["error"]["portal_ids"] == [other["id"]]
    if case == "unknown":
        assert ids[1] in body["error"]["message"]
    made = await pool.fetchval(
        "SELECT count(*) FROM invitations WHERE email_lower = $1 AND group_id IS NOT NULL",
        email.lower(),
    )
    assert made == 0


async def test_one_email_one_delivery_for_each_of_its_invitations(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    status, body = await invite_group(
        client, [world.add_portal()["id"] for _ in range(2)], new_email()
    )
    [mail] = await group_mails(pool, body["group_id"])
    async with pool.acquire() as conn:
        sent = MailSent(
            mail_id=uuid.UUID(mail["mail_id"]),
            template="invitation",
            ref_type="invitation_group",
            ref_id=uuid.UUID(body["group_id"]),
        )
        await consumer.on_mail_outcomes(
            client.app[DEPS].within(conn),
            [(None, sent)],  # type: ignore[list-item]  # the envelope is not read
        )
    for invitation in body["invitations"]:
        shown = await (await client.get(f"/invitations/{invitation['id']}")).json()
        assert shown["delivery"] == "sent"


async def test_one_reminder_for_the_group(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    response = await client.put("/settings/access", json={"invitation_reminder_days": 1})
    assert response.status == 200
    try:
        status, body = await invite_group(
            client, [world.add_portal()["id"] for _ in range(3)], new_email(), expires_in_days=7
        )
        [mail] = await group_mails(pool, body["group_id"])
        clock.advance(days=6, hours=1)
        await remind_once(client.app[DEPS])
        await remind_once(client.app[DEPS])
        [_, reminder] = await group_mails(pool, body["group_id"])
        assert reminder["template"] == "invitation_reminder"
        assert len(reminder["context"]["portal_titles"].split(",")) == 3
        status, link = await validate(client, token_of(reminder))
        assert status == 200 and len(link["invitations"]) == 3
        status, old = await validate(client, token_of(mail))
        assert (status, old["error"]["code"]) == (410, "invitation_replaced")
    finally:
        await pool.execute("UPDATE settings SET invitation_reminder_days = 0")


async def test_the_same_request_at_once_makes_one_group(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    ids = [world.add_portal()["id"] for _ in range(3)]
    email, key = new_email(), f"race-{uuid.uuid4().hex}"
    answers = await asyncio.gather(
        *(invite_group(client, ids, email, idempotency_key=key) for _ in range(8))
    )
    assert {status for status, _ in answers} == {201}
    assert len({body["group_id"] for _, body in answers}) == 1
    group_id = answers[0][1]["group_id"]
    assert len(await group_mails(pool, group_id)) == 1
    made = await pool.fetchval(
        "SELECT count(*) FROM invitations WHERE email_lower = $1", email.lower()
    )
    assert made == 3


async def test_sixteen_accepts_of_one_groups_link_one_wins(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    status, body = await invite_group(
        client, [world.add_portal()["id"] for _ in range(3)], new_email()
    )
    [mail] = await group_mails(pool, body["group_id"])
    token = token_of(mail)
    answers = await asyncio.gather(
        *(client.post("/invitations/reserve", json={"token": token}) for _ in range(16))
    )
    statuses = sorted(response.status for response in answers)
    assert statuses == [200] + [409] * 15
    [winner] = [r for r in answers if r.status == 200]
    assert len((await winner.json())["invitations"]) == 3
