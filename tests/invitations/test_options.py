"""Issue 20, per-invitation options on the real database and broker: Link Expiry
(``expires_in_days``), Personal Message, the list's email filter and the status counts."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.db import migrate
from tests.invitations.conftest import Clock, World, outbox_events
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
MIGRATIONS = Path(__file__).resolve().parents[2] / "services/invitations/migrations"


def new_email() -> str:
    return f"opt-{uuid.uuid4().hex[:10]}@Example.COM"


async def invite(client: Client, portal_id: str, email: str, **extra: Any) -> tuple[int, Any]:
    response = await client.post(
        "/invitations", json={"portal_id": portal_id, "email": email, **extra}
    )
    return response.status, await response.json()


def length(inv: dict[str, Any]) -> timedelta:
    return datetime.fromisoformat(inv["expires_at"]) - datetime.fromisoformat(inv["sent_at"])


async def mails(pool: asyncpg.Pool, invitation_id: str) -> list[dict[str, Any]]:
    return [
        e["data"]["context"]
        for t, e in await outbox_events(pool, invitation_id)
        if t == "mail.requested"
    ]


async def events_of(pool: asyncpg.Pool, invitation_id: str, kind: str) -> list[dict[str, Any]]:
    return [e["data"] for t, e in await outbox_events(pool, invitation_id) if t == kind]


async def test_chosen_expiry_and_message_are_kept_by_a_resend(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    portal = world.add_portal(title="Acme Rebrand")
    message = "Hi Jane,\n<script>alert(1)</script> see you & the team soon."
    status, body = await invite(
        client, portal["id"], new_email(), expires_in_days=21, personal_message=message
    )
    assert status == 201, body
    inv = body["invitation"]
    assert inv["expires_in_days"] == 21 and length(inv) == timedelta(days=21)
    assert inv["personal_message"] == message
    [created] = await events_of(pool, inv["id"], "invitation.created")
    assert created["expires_in_days"] == 21
    assert "personal_message" not in created  # the message stays between us and the person
    [ctx] = await mails(pool, inv["id"])
    assert ctx["personal_message"] == message and ctx["expires_in_days"] == "21"

    # The setting changes; a Resend keeps the length chosen for this invitation.
    await client.put("/settings/access", json={"invitation_expiry_days": 7})
    try:
        clock.advance(days=1)
        response = await client.post(f"/invitations/{inv['id']}/resend")
        assert response.status == 200
        resent = await response.json()
    finally:
        await client.put("/settings/access", json={"invitation_expiry_days": 14})
    assert resent["expires_in_days"] == 21 and length(resent) == timedelta(days=21)
    assert resent["sent_at"] == clock.now.isoformat()
    assert resent["personal_message"] == message
    [event] = await events_of(pool, inv["id"], "invitation.resent")
    assert event["expires_in_days"] == 21
    ctx = (await mails(pool, inv["id"]))[-1]
    assert ctx["personal_message"] == message and ctx["expires_in_days"] == "21"
    listed = await (await client.get("/invitations", params={"portal_id": portal["id"]})).json()
    assert [(i["id"], i["expires_in_days"]) for i in listed["items"]] == [(inv["id"], 21)]


async def test_without_options_the_setting_decides_and_no_message(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    status, body = await invite(client, portal["id"], new_email(), personal_message="  \n ")
    assert status == 201
    inv = body["invitation"]
    assert inv["expires_in_days"] == 14 and inv["personal_message"] is None
    [ctx] = await mails(pool, inv["id"])
    assert "personal_message" not in ctx and ctx["expires_in_days"] == "14"
    # Not chosen: a Resend follows the setting of the day.
    await client.put("/settings/access", json={"invitation_expiry_days": 30})
    try:
        resent = await (await client.post(f"/invitations/{inv['id']}/resend")).json()
    finally:
        await client.put("/settings/access", json={"invitation_expiry_days": 14})
    assert resent["expires_in_days"] == 30 and length(resent) == timedelta(days=30)


async def test_inviting_again_with_new_options_resends_with_them(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    email = new_email()
    _, first = await invite(client, portal["id"], email, personal_message="First note")
    status, again = await invite(client, portal["id"], email, expires_in_days=7)
    assert status == 200 and again["outcome"] == "resent"
    inv = again["invitation"]
    assert inv["id"] == first["invitation"]["id"]
    assert inv["expires_in_days"] == 7 and length(inv) == timedelta(days=7)
    assert inv["personal_message"] == "First note"  # not given again: kept
    assert (await mails(pool, inv["id"]))[-1]["personal_message"] == "First note"


@pytest.mark.parametrize("days", [0, 10, 31, -7, 365])
async def test_other_expiry_lengths_are_refused(client: Client, world: World, days: int) -> None:
    portal = world.add_portal()
    status, body = await invite(client, portal["id"], new_email(), expires_in_days=days)
    assert status == 422
    assert body["error"]["code"] == "invalid_expires_in_days"
    assert "7, 14, 21 or 30" in body["error"]["message"]


async def test_personal_message_is_at_most_1000_characters(client: Client, world: World) -> None:
    portal = world.add_portal()
    status, body = await invite(client, portal["id"], new_email(), personal_message="x" * 1001)
    assert status == 422 and body["error"]["code"] == "personal_message_too_long"
    assert "1,000 characters" in body["error"]["message"]
    status, body = await invite(client, portal["id"], new_email(), personal_message="é" * 1000)
    assert status == 201 and body["invitation"]["personal_message"] == "é" * 1000


async def test_email_filter_and_status_counts(client: Client, world: World, clock: Clock) -> None:
    portal = world.add_portal()
    other = world.add_portal()
    email = new_email()
    ids = []
    for target in (portal, other):
        _, body = await invite(client, target["id"], email)
        ids.append(body["invitation"]["id"])
    _, body = await invite(client, portal["id"], new_email())  # someone else
    revoked = body["invitation"]["id"]
    await client.post(f"/invitations/{revoked}/revoke")

    # Exact match on the normalised address, in any case.
    for spelling in (email, email.upper(), "  " + email.lower()):
        response = await client.get("/invitations", params={"email": spelling})
        assert response.status == 200
        assert [i["id"] for i in (await response.json())["items"]] == list(reversed(ids))
    response = await client.get("/invitations", params={"email": "opt-nobody@example.com"})
    assert (await response.json())["items"] == []
    response = await client.get("/invitations", params={"email": "not an address"})
    assert response.status == 422 and (await response.json())["error"]["code"] == "invalid_email"

    response = await client.get("/invitations/counts", params={"portal_id": portal["id"]})
    assert await response.json() == {
        "all": 2, "pending": 1, "accepted": 0, "expired": 0, "revoked": 1,
    }  # fmt: skip
    response = await client.get("/invitations/counts", params={"email": email})
    assert (await response.json())["pending"] == 2
    # Past their end, pending invitations count as expired before the sweep marks them.
    clock.advance(days=15)
    response = await client.get(
        "/invitations/counts", params={"portal_id": portal["id"], "email": email}
    )
    assert await response.json() == {
        "all": 1, "pending": 0, "accepted": 0, "expired": 1, "revoked": 0,
    }  # fmt: skip


async def test_upgrade_records_the_length_of_links_already_sent(
    test_env: TestEnv, tmp_path: Path
) -> None:
    """0005 on a schema holding invitations: the length of each link is recorded when it is
    one of the choices (NULL otherwise), none counts as chosen, and there is no message."""
    for path in sorted(MIGRATIONS.glob("000[1-3]_*.sql")):
        shutil.copy(path, tmp_path / path.name)
    schema = f"inv_upgrade_{uuid.uuid4().hex[:8]}"
    await migrate(test_env.database_url, schema, tmp_path)
    conn = await asyncpg.connect(test_env.database_url)
    try:
        sent = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        for days in (21, 10):
            await conn.execute(
                f"INSERT INTO {schema}.invitations (id, email, email_lower, portal_id,"
                " token_hash, sent_at, expires_at) VALUES ($1, $2, $2, $3, $4, $5, $6)",
                uuid.uuid4(),
                f"old-{days}@example.com",
                uuid.uuid4(),
                uuid.uuid4().hex,
                sent,
                sent + timedelta(days=days),
            )
        shutil.copy(MIGRATIONS / "0005_invite_options.sql", tmp_path)
        assert await migrate(test_env.database_url, schema, tmp_path) == ["0005_invite_options.sql"]
        rows = await conn.fetch(
            f"SELECT email, expires_in_days, expiry_chosen, personal_message"
            f" FROM {schema}.invitations ORDER BY email"
        )
        assert [tuple(r) for r in rows] == [
            ("old-10@example.com", None, False, None),
            ("old-21@example.com", 21, False, None),
        ]
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
