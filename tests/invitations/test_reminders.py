"""Invitation Reminder on the real database, with a controlled clock (never a sleep):
one reminder per invitation with a fresh link, however many replicas sweep, across
restarts, and only for invitations that can still be accepted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.invitations import repository as repo
from services.invitations.api import DEPS
from services.invitations.clients import PortalInfo
from services.invitations.handlers import remind_once
from tests.invitations.conftest import AppFactory, Clock, World, last_token, outbox_events
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def new_email() -> str:
    return f"remind-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
async def reminder_one_day(client: Client, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Invitation Reminder: 1 day before expiry (the setting is the run's: Off after)."""
    response = await client.put("/settings/access", json={"invitation_reminder_days": 1})
    assert response.status == 200
    yield
    await pool.execute("UPDATE settings SET invitation_reminder_days = 0")


async def invite(
    client: Client, portal: dict[str, Any], email: str | None = None, **options: str
) -> str:
    response = await client.post(
        "/invitations",
        json={"portal_id": portal["id"], "email": email or new_email(), **options},
    )
    assert response.status == 201, await response.text()
    return str((await response.json())["invitation"]["id"])


async def events_of(pool: asyncpg.Pool, inv_id: str, event_type: str) -> list[dict[str, Any]]:
    return [e["data"] for t, e in await outbox_events(pool, inv_id) if t == event_type]


async def reminded(pool: asyncpg.Pool, inv_id: str) -> int:
    return len(await events_of(pool, inv_id, "invitation.reminded"))


async def test_reminder_is_off_by_default(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    settings = await (await client.get("/settings/access")).json()
    assert settings["invitation_reminder_days"] == 0
    inv_id = await invite(client, world.add_portal())
    clock.advance(days=13, hours=12)
    await remind_once(client.app[DEPS])
    assert await reminded(pool, inv_id) == 0


async def test_one_reminder_with_a_fresh_link_a_day_before_expiry(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock, reminder_one_day: None
) -> None:
    email = new_email()
    inv_id = await invite(
        client,
        world.add_portal(title="Acme Rebrand"),
        email,
        personal_message="See you Monday.",
    )
    first = await last_token(pool, inv_id)
    before = await (await client.get(f"/invitations/{inv_id}")).json()
    deps = client.app[DEPS]

    clock.advance(days=12, hours=23, minutes=59)  # a minute before the window
    await remind_once(deps)
    assert await reminded(pool, inv_id) == 0

    clock.advance(minutes=1)  # exactly one day before expiry
    await remind_once(deps)
    [event] = await events_of(pool, inv_id, "invitation.reminded")
    assert {**event, "expires_at": datetime.fromisoformat(event["expires_at"])} == {
        "invitation_id": inv_id,
        "portal_id": before["portal_id"],
        "email": email,
        "expires_at": datetime.fromisoformat(before["expires_at"]),  # the expiry stays
        "invited_by": before["invited_by"],
        "group_id": None,  # sent on its own, not with other portals
    }
    mail = (await events_of(pool, inv_id, "mail.requested"))[-1]
    assert mail["template"] == "invitation_reminder" and mail["to"] == email
    assert mail["context"]["portal_title"] == "Acme Rebrand"
    assert mail["context"]["expires_at"] == before["expires_at"]
    # It repeats the Personal Message, as the invitation said it (and the name, when the
    # invitation has one: tests/mailer/test_reminder_rendering.py).
    assert mail["context"]["personal_message"] == "See you Monday."
    fresh = await last_token(pool, inv_id)
    assert fresh != first
    old = await client.get("/invitations/validate", params={"token": first})
    assert old.status == 410 and (await old.json())["error"]["code"] == "invitation_replaced"
    assert (await client.get("/invitations/validate", params={"token": fresh})).status == 200

    shown = await (await client.get(f"/invitations/{inv_id}")).json()
    assert shown["reminded_at"] == clock.now.isoformat()
    assert shown["send_reason"] == "reminder" and shown["send_count"] == 2
    assert shown["expires_at"] == before["expires_at"]
    assert shown["sent_at"] == before["sent_at"]

    # Later rounds, even in the last hour: never a second reminder.
    clock.advance(hours=23)
    await remind_once(deps)
    assert await reminded(pool, inv_id) == 1


async def test_many_replicas_sweeping_at_once_send_one_reminder(
    app_factory: AppFactory,
    client: Client,
    world: World,
    pool: asyncpg.Pool,
    clock: Clock,
    reminder_one_day: None,
) -> None:
    ids = [await invite(client, world.add_portal()) for _ in range(5)]
    replicas = [client] + [await app_factory() for _ in range(3)]
    clock.advance(days=13, hours=1)
    await asyncio.gather(
        *(remind_once(replica.app[DEPS]) for replica in replicas for _ in range(2))
    )
    for inv_id in ids:
        assert await reminded(pool, inv_id) == 1
        mails = await events_of(pool, inv_id, "mail.requested")
        assert [m["template"] for m in mails] == ["invitation", "invitation_reminder"]


async def test_a_restart_neither_repeats_nor_loses_a_reminder(
    app_factory: AppFactory,
    client: Client,
    world: World,
    pool: asyncpg.Pool,
    clock: Clock,
    reminder_one_day: None,
) -> None:
    early = await invite(client, world.add_portal())
    clock.advance(days=1)
    late = await invite(client, world.add_portal())
    clock.advance(days=12, hours=1)  # early is in its window, late not yet
    await remind_once(client.app[DEPS])
    assert (await reminded(pool, early), await reminded(pool, late)) == (1, 0)
    await client.close()  # the instance goes away

    # While nothing ran, late entered its window; a new instance starts (its first sweep
    # runs at start) and sends exactly what is still due.
    clock.advance(days=1)
    restarted = await app_factory()
    await remind_once(restarted.app[DEPS])
    assert (await reminded(pool, early), await reminded(pool, late)) == (1, 1)


async def test_no_reminder_for_what_can_no_longer_be_accepted(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock, reminder_one_day: None
) -> None:
    revoked = await invite(client, world.add_portal())
    await client.post(f"/invitations/{revoked}/revoke")

    accepted = await invite(client, world.add_portal())
    token = await last_token(pool, accepted)
    claim = (await (await client.post("/invitations/reserve", json={"token": token})).json())[
        "claim"
    ]
    await client.post(
        "/invitations/accept",
        json={"token": token, "claim": claim, "user_id": str(uuid.uuid4())},
    )

    archived_portal = world.add_portal()
    archived = await invite(client, archived_portal)
    archived_portal.update(status="archived", revision=archived_portal["revision"] + 1)
    async with pool.acquire() as conn:
        await repo.upsert_portal(conn, PortalInfo.from_json(archived_portal))

    missed = await invite(client, world.add_portal())
    clock.advance(days=14)  # missed's window passed with no sweep: it has expired
    await remind_once(client.app[DEPS])
    for inv_id in (revoked, accepted, archived, missed):
        assert await reminded(pool, inv_id) == 0, inv_id


async def test_a_reminder_the_caps_refuse_waits_for_a_later_round(
    app_factory: AppFactory,
    world: World,
    pool: asyncpg.Pool,
    clock: Clock,
) -> None:
    client = await app_factory(invitations_sends_per_address_hour=1)
    await client.put("/settings/access", json={"invitation_reminder_days": 1})
    try:
        email = new_email()
        due = await invite(client, world.add_portal(), email)
        clock.advance(days=13, hours=1)
        # Another invitation of the same person was just resent: the address is at its cap.
        other = await invite(client, world.add_portal(), email)
        assert (await client.post(f"/invitations/{other}/resend")).status == 200
        await remind_once(client.app[DEPS])
        assert await reminded(pool, due) == 0
        shown = await (await client.get(f"/invitations/{due}")).json()
        assert shown["reminded_at"] is None
        clock.advance(hours=1)
        await remind_once(client.app[DEPS])
        assert await reminded(pool, due) == 1
    finally:
        await client.put("/settings/access", json={"invitation_reminder_days": 0})


async def test_reminder_setting_is_validated(client: Client) -> None:
    for days in (3, 1, 0):
        response = await client.put("/settings/access", json={"invitation_reminder_days": days})
        assert response.status == 200
        body = await response.json()
        assert body == {"invitation_expiry_days": 14, "invitation_reminder_days": days}
    for bad in (2, 7, -1, "soon"):
        response = await client.put("/settings/access", json={"invitation_reminder_days": bad})
        assert response.status == 422
    assert (await (await client.get("/settings/access")).json())["invitation_reminder_days"] == 0


async def test_the_reminder_window_is_whole_days_whatever_the_database_time_zone(
    app_factory: AppFactory,
    client: Client,
    world: World,
    pool: asyncpg.Pool,
    clock: Clock,
    reminder_one_day: None,
    migrated_schemas: TestEnv,
) -> None:
    """The sweep's SQL added the reminder's days as calendar days of the database
    session's TimeZone (the server's default, often the host's: Europe/Berlin), where the
    rule counts 24 hours: on the night Berlin moves its clocks forward that day had 23
    hours, and an invitation 23.5 hours from its expiry got no reminder."""
    berlin = await app_factory(
        database_url=migrated_schemas.database_url + "?TimeZone=Europe/Berlin"
    )
    clock.now = datetime(2027, 3, 14, 9, 30, tzinfo=UTC)
    inv_id = await invite(berlin, world.add_portal())
    shown = await (await berlin.get(f"/invitations/{inv_id}")).json()
    assert shown["expires_at"] == "2027-03-28T09:30:00+00:00"
    clock.now = datetime(2027, 3, 27, 10, 0, tzinfo=UTC)  # 23.5 hours before it expires
    await remind_once(berlin.app[DEPS])
    assert await reminded(pool, inv_id) == 1
