"""The invitations HTTP API on the real database and broker, with fake identity/portals."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.actor import ACTOR_HEADER, Actor, encode_actor
from tests.invitations.conftest import (
    PUBLIC_URL,
    AppFactory,
    Clock,
    World,
    first_write,
    last_token,
    outbox_events,
)
from tests.support.env import free_port

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def new_email() -> str:
    return f"client-{uuid.uuid4().hex[:10]}@Example.COM"


async def invite(client: Client, portal_id: str, email: str, **extra: Any) -> tuple[int, Any]:
    response = await client.post(
        "/invitations", json={"portal_id": portal_id, "email": email, **extra}
    )
    return response.status, await response.json()


async def error_code(response: Any) -> str:
    return str((await response.json())["error"]["code"])


async def test_a_first_invitation_is_one_statement_that_writes_nothing_when_refused(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    """The common case is written as one statement (row, first link, both events in
    order); the same person again is refused by the unique rule with nothing of its own
    written, and the transaction's path resends."""
    from services.invitations import repository as repo

    portal = world.add_portal()
    email = new_email()
    status, body = await invite(client, portal["id"], email)
    assert status == 201 and body["outcome"] == "created"
    first = body["invitation"]
    events = [t for t, _ in await outbox_events(pool, first["id"])]
    assert events == ["invitation.created", "mail.requested"]
    assert (
        await pool.fetchval(
            "SELECT reason FROM invitation_links l JOIN invitations i ON i.token_hash = l.token_hash"
            " WHERE i.id = $1",
            uuid.UUID(first["id"]),
        )
        == "invited"
    )

    write = first_write(uuid.UUID(portal["id"]), first["email"], clock.now)
    again = write[0]
    refused = await repo.insert_firsts(pool, [write], "invited")
    assert refused == {}
    assert await outbox_events(pool, str(again.invitation_id)) == []
    assert not await pool.fetchval(
        "SELECT count(*) FROM invitation_links WHERE token_hash = $1", again.token_hash
    )

    status, body = await invite(client, portal["id"], email)
    assert status == 200 and body["outcome"] == "resent"
    assert body["invitation"]["id"] == first["id"]


async def test_invite_creates_and_queues_mail(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    portal = world.add_portal(title="Acme Rebrand")
    email = new_email()
    status, body = await invite(client, portal["id"], "  " + email, invited_by="Ann")
    assert status == 201 and body["outcome"] == "created"
    inv = body["invitation"]
    assert inv["email"] == email.split("@")[0] + "@example.com"
    assert inv["status"] == "pending" and inv["delivery"] == "queued"
    assert inv["portal_title"] == "Acme Rebrand" and inv["portal_slug"] == portal["slug"]
    assert inv["send_count"] == 1
    assert "token" not in str(body)

    events = await outbox_events(pool, inv["id"])
    types = [t for t, _ in events]
    assert types == ["invitation.created", "mail.requested"] or types == [
        "mail.requested",
        "invitation.created",
    ]
    created = next(e for t, e in events if t == "invitation.created")
    assert "accept_url" not in str(created) and "token" not in str(created["data"])
    mail = next(e for t, e in events if t == "mail.requested")["data"]
    assert mail["template"] == "invitation" and mail["ref_type"] == "invitation"
    assert mail["ref_id"] == inv["id"] and mail["to"] == inv["email"]
    ctx = mail["context"]
    assert ctx["accept_url"].startswith(PUBLIC_URL + "/invitations/accept?token=")
    assert ctx["portal_title"] == "Acme Rebrand"
    assert ctx["site_name"] == "clients.example.com"
    assert ctx["invited_by"] == "Ann"
    assert ctx["expires_at"] == inv["expires_at"]
    # Stored only as a hash.
    token = ctx["accept_url"].split("token=")[1]
    stored = await pool.fetchval(
        "SELECT token_hash FROM invitations WHERE id = $1", uuid.UUID(inv["id"])
    )
    assert stored != token and len(stored) == 64
    # The token travels only in the private mail job, sealed: no outbox row shows it.
    rows = await pool.fetch(
        "SELECT exchange, routing_key, body FROM outbox"
        " WHERE convert_from(body, 'UTF8') LIKE '%' || $1 || '%'",
        token,
    )
    assert rows == []
    jobs = await pool.fetch("SELECT exchange FROM outbox WHERE routing_key = 'mail.requested'")
    assert {r["exchange"] for r in jobs} == {"mail"}


async def test_second_invite_of_same_person_resends(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    email = new_email()
    _, first = await invite(client, portal["id"], email)
    old_token = await last_token(pool, first["invitation"]["id"])
    status, second = await invite(client, portal["id"], email.upper())
    assert status == 200 and second["outcome"] == "resent"
    assert second["invitation"]["id"] == first["invitation"]["id"]
    assert second["invitation"]["send_count"] == 2
    response = await client.get("/invitations/validate", params={"token": old_token})
    # The old link is known: it says it was replaced (tests/invitations/test_links.py).
    assert response.status == 410 and await error_code(response) == "invitation_replaced"


async def test_invite_refusals(client: Client, world: World) -> None:
    portal = world.add_portal()
    status, body = await invite(client, portal["id"], "Jane <jane@example.com>")
    assert status == 422 and body["error"]["code"] == "invalid_email"
    status, body = await invite(client, portal["id"], "a@example.com\r\nBcc: b@example.com")
    assert status == 422 and body["error"]["code"] == "invalid_email"
    status, body = await invite(client, str(uuid.uuid4()), new_email())
    assert status == 404 and body["error"]["code"] == "portal_not_found"
    for state in ("pending", "archived"):
        other = world.add_portal(status=state)
        status, body = await invite(client, other["id"], new_email())
        assert status == 409 and body["error"]["code"] == "portal_not_active"
    member = new_email()
    world.add_user(member, portal["id"])
    status, body = await invite(client, portal["id"], member)
    assert status == 409 and body["error"]["code"] == "already_has_access"
    # An account without access to this portal is invited normally.
    outsider = new_email()
    world.add_user(outsider)
    status, body = await invite(client, portal["id"], outsider)
    assert status == 201


async def test_idempotency_key_replay(client: Client, world: World, pool: asyncpg.Pool) -> None:
    portal = world.add_portal()
    key = uuid.uuid4().hex
    email = new_email()
    _, first = await invite(client, portal["id"], email, idempotency_key=key)
    status, again = await invite(client, portal["id"], email, idempotency_key=key)
    assert status == 201 and again["invitation"]["id"] == first["invitation"]["id"]
    assert again["invitation"]["send_count"] == 1
    mails = [t for t, _ in await outbox_events(pool, first["invitation"]["id"])]
    assert mails.count("mail.requested") == 1


async def test_validate_and_accept(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    portal = world.add_portal(title="Validate Me")
    email = new_email()
    _, body = await invite(client, portal["id"], email, sub_client=True)
    inv_id = body["invitation"]["id"]
    token = await last_token(pool, inv_id)

    for _ in range(2):  # validating never consumes the token
        response = await client.get("/invitations/validate", params={"token": token})
        assert response.status == 200
        info = await response.json()
    assert info["invitation_id"] == inv_id and info["account_exists"] is False
    assert info["portal_title"] == "Validate Me" and info["portal_slug"] == portal["slug"]
    world.add_user(email)
    response = await client.get("/invitations/validate", params={"token": token})
    assert (await response.json())["account_exists"] is True

    user_id = str(uuid.uuid4())
    response = await client.post("/invitations/reserve", json={"token": token})
    assert response.status == 200
    reserved = await response.json()
    assert reserved["invitation"]["id"] == inv_id and reserved["invitation"]["status"] == "accepted"
    assert reserved["invitation"]["accepted_at"] is None
    claim = reserved["claim"]
    response = await client.post(
        "/invitations/accept", json={"token": token, "claim": claim, "user_id": user_id}
    )
    assert response.status == 200
    accepted = await response.json()
    assert accepted["status"] == "accepted" and accepted["accepted_at"] is not None
    events = dict(await outbox_events(pool, inv_id))
    assert events["invitation.accepted"]["data"]["user_id"] == user_id
    assert events["invitation.accepted"]["data"]["sub_client"] is True

    response = await client.get("/invitations/validate", params={"token": token})
    assert response.status == 409 and await error_code(response) == "invitation_used"
    response = await client.post("/invitations/reserve", json={"token": token})
    assert response.status == 409 and await error_code(response) == "invitation_used"
    response = await client.post(
        "/invitations/accept", json={"token": token, "claim": claim, "user_id": user_id}
    )
    assert response.status == 409 and await error_code(response) == "invitation_used"
    for bad in ("", "nope", "x" * 500):
        response = await client.get("/invitations/validate", params={"token": bad})
        assert response.status == 404 and await error_code(response) == "invitation_invalid"
    response = await client.post(f"/invitations/{inv_id}/resend")
    assert response.status == 409 and await error_code(response) == "invitation_accepted"
    response = await client.post(f"/invitations/{inv_id}/revoke")
    assert response.status == 409 and await error_code(response) == "invitation_accepted"


async def test_expired_link_then_resend_with_current_setting(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    portal = world.add_portal()
    _, body = await invite(client, portal["id"], new_email())
    inv_id = body["invitation"]["id"]
    token = await last_token(pool, inv_id)
    clock.advance(days=14)  # exactly at expiry: dead
    response = await client.get("/invitations/validate", params={"token": token})
    assert response.status == 410 and await error_code(response) == "invitation_expired"
    response = await client.post("/invitations/reserve", json={"token": token})
    assert response.status == 410 and await error_code(response) == "invitation_expired"
    response = await client.get(f"/invitations/{inv_id}")
    assert (await response.json())["status"] == "expired"

    response = await client.put("/settings/access", json={"invitation_expiry_days": 30})
    assert response.status == 200
    try:
        response = await client.post(f"/invitations/{inv_id}/resend")
        assert response.status == 200
        resent = await response.json()
    finally:
        await client.put("/settings/access", json={"invitation_expiry_days": 14})
    assert resent["status"] == "pending" and resent["send_count"] == 2
    assert resent["sent_at"] == clock.now.isoformat()
    assert resent["expires_at"] == (clock.now + timedelta(days=30)).isoformat()
    new_token = await last_token(pool, inv_id)
    assert new_token != token
    response = await client.get("/invitations/validate", params={"token": token})
    assert response.status == 410 and await error_code(response) == "invitation_replaced"
    response = await client.get("/invitations/validate", params={"token": new_token})
    assert response.status == 200
    assert "invitation.resent" in [t for t, _ in await outbox_events(pool, inv_id)]


async def test_revoke(client: Client, world: World, pool: asyncpg.Pool) -> None:
    portal = world.add_portal()
    _, body = await invite(client, portal["id"], new_email())
    inv_id = body["invitation"]["id"]
    token = await last_token(pool, inv_id)
    response = await client.post(f"/invitations/{inv_id}/revoke")
    assert response.status == 200
    revoked = await response.json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
    response = await client.post(f"/invitations/{inv_id}/revoke")  # idempotent
    assert response.status == 200
    assert [t for t, _ in await outbox_events(pool, inv_id)].count("invitation.revoked") == 1
    response = await client.get("/invitations/validate", params={"token": token})
    assert response.status == 410 and await error_code(response) == "invitation_revoked"
    response = await client.post(f"/invitations/{inv_id}/resend")
    assert response.status == 409 and await error_code(response) == "invitation_revoked"
    response = await client.get(f"/invitations/{uuid.uuid4()}")
    assert response.status == 404
    response = await client.get("/invitations/not-a-uuid")
    assert response.status == 404


async def test_list_filters_and_pages(client: Client, world: World) -> None:
    portal = world.add_portal()
    ids = []
    for _ in range(5):
        _, body = await invite(client, portal["id"], new_email())
        ids.append(body["invitation"]["id"])
    await client.post(f"/invitations/{ids[0]}/revoke")

    seen: list[str] = []
    cursor = None
    while True:
        params = {"portal_id": portal["id"], "limit": "2"}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/invitations", params=params)
        assert response.status == 200
        page = await response.json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    response = await client.get(
        "/invitations", params={"portal_id": portal["id"], "status": "pending"}
    )
    pending = [item["id"] for item in (await response.json())["items"]]
    assert pending == list(reversed(ids[1:]))
    response = await client.get(
        "/invitations", params={"portal_id": portal["id"], "status": "revoked"}
    )
    assert [item["id"] for item in (await response.json())["items"]] == [ids[0]]
    for bad in ({"limit": "0"}, {"limit": "201"}, {"status": "nope"}, {"cursor": "%%%"}):
        response = await client.get("/invitations", params=bad)
        assert response.status == 422


async def test_list_filters_by_the_exact_address_in_any_case(client: Client, world: World) -> None:
    first, second = world.add_portal(), world.add_portal()
    local = f"Mixed.Case-{uuid.uuid4().hex[:8]}"
    _, one = await invite(client, first["id"], f"  {local}@Example.COM ")
    _, two = await invite(client, second["id"], f"{local}@example.com")
    await invite(client, first["id"], f"{local}x@example.com")  # a longer address: not it
    for asked in (f"{local}@example.com", f"{local.upper()}@EXAMPLE.COM"):
        response = await client.get("/invitations", params={"email": asked})
        assert response.status == 200
        found = [item["id"] for item in (await response.json())["items"]]
        assert found == [two["invitation"]["id"], one["invitation"]["id"]], asked
    response = await client.get(
        "/invitations", params={"email": f"{local}@example.com", "portal_id": first["id"]}
    )
    assert [i["id"] for i in (await response.json())["items"]] == [one["invitation"]["id"]]
    response = await client.get("/invitations", params={"email": f"{local[:-1]}@example.com"})
    assert (await response.json())["items"] == []


async def test_access_settings(client: Client) -> None:
    response = await client.get("/settings/access")
    assert await response.json() == {"invitation_expiry_days": 14, "invitation_reminder_days": 0}
    for days in (7, 21, 30, 14):
        response = await client.put("/settings/access", json={"invitation_expiry_days": days})
        assert response.status == 200
        assert await response.json() == {
            "invitation_expiry_days": days,
            "invitation_reminder_days": 0,
        }
    for bad in (0, 10, 31, "many"):
        response = await client.put("/settings/access", json={"invitation_expiry_days": bad})
        assert response.status == 422
        message = (await response.json())["error"]["message"]
        assert "invitation_expiry_days" in message or "7, 14, 21 or 30" in message
    response = await client.get("/settings/access")
    assert await response.json() == {"invitation_expiry_days": 14, "invitation_reminder_days": 0}


async def _settings_events(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT body FROM outbox WHERE routing_key = 'invitation.settings.changed' ORDER BY seq"
    )
    return [orjson.loads(row["body"]) for row in rows]


async def test_a_settings_change_is_announced_with_who_made_it(
    client: Client, pool: asyncpg.Pool
) -> None:
    dana = Actor(type="user", id=str(uuid.uuid4()), name="dana@agency.example")
    headers = {ACTOR_HEADER: encode_actor(dana)}
    before = len(await _settings_events(pool))
    try:
        body = {"invitation_expiry_days": 21, "invitation_reminder_days": 0}
        response = await client.put("/settings/access", json=body, headers=headers)
        assert response.status == 200
        # The same values again change nothing, and announce nothing.
        response = await client.put("/settings/access", json=body, headers=headers)
        assert response.status == 200
        [event] = (await _settings_events(pool))[before:]
        assert event["data"] == {
            "changes": {"invitation_expiry_days": 21},
            "previous": {"invitation_expiry_days": 14},
        }
        assert event["actor"] == dana.model_dump()
    finally:
        await client.put("/settings/access", json={"invitation_expiry_days": 14})


async def test_new_invitation_uses_current_setting(
    client: Client, world: World, clock: Clock
) -> None:
    await client.put("/settings/access", json={"invitation_expiry_days": 7})
    try:
        _, body = await invite(client, world.add_portal()["id"], new_email())
    finally:
        await client.put("/settings/access", json={"invitation_expiry_days": 14})
    inv = body["invitation"]
    assert datetime.fromisoformat(inv["expires_at"]) - datetime.fromisoformat(
        inv["sent_at"]
    ) == timedelta(days=7)


async def test_portal_fetched_once_then_from_replica(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal(title="Fresh")
    await invite(client, portal["id"], new_email())
    row = await pool.fetchrow(
        "SELECT title, status, revision FROM portals WHERE portal_id = $1",
        uuid.UUID(portal["id"]),
    )
    assert row is not None and row["title"] == "Fresh" and row["revision"] == 1


async def test_identity_unreachable_is_503(app_factory: AppFactory, world: World) -> None:
    client = await app_factory(identity_url=f"http://127.0.0.1:{free_port()}")
    portal = world.add_portal()
    status, body = await invite(client, portal["id"], new_email())
    assert status == 503 and body["error"]["code"] == "identity_unavailable"


async def test_portal_made_active_a_moment_ago(client: Client, world: World) -> None:
    portal = world.add_portal(status="pending")
    status, body = await invite(client, portal["id"], new_email())
    assert status == 409 and body["error"]["code"] == "portal_not_active"
    # Activated, but the portal.updated event hasn't reached the replica yet.
    portal.update(status="active", revision=2)
    status, body = await invite(client, portal["id"], new_email())
    assert status == 201


async def test_openapi_document(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    assert {"post", "get"} <= set(document["paths"]["/invitations"])
    assert "/invitations/{id}/resend" in document["paths"]
