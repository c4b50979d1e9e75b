"""Issue 17, an invitation's language on the real database and broker: accepted and
checked on every way in, kept by a resend, shown in answers and the link's validation,
carried by invitation.created / .resent and by every mail job."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.invitations.conftest import Clock, World, last_token, outbox_events

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
LANGUAGE_MESSAGE = "Language (locale) must be one of en, de, fr, es."


def new_email() -> str:
    return f"locale-{uuid.uuid4().hex[:10]}@example.com"


async def events(pool: asyncpg.Pool, invitation_id: str, kind: str) -> list[dict[str, Any]]:
    return [e["data"] for t, e in await outbox_events(pool, invitation_id) if t == kind]


async def test_locale_is_kept_announced_and_mailed(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    portal = world.add_portal(title="Acme Rebrand")
    response = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": new_email(), "locale": "de"}
    )
    assert response.status == 201, await response.text()
    inv = (await response.json())["invitation"]
    assert inv["locale"] == "de"
    [created] = await events(pool, inv["id"], "invitation.created")
    assert created["locale"] == "de"
    [job] = await events(pool, inv["id"], "mail.requested")
    assert job["locale"] == "de"

    # The link's validation names it (the accept page is shown in it).
    token = await last_token(pool, inv["id"])
    response = await client.get("/invitations/validate", params={"token": token})
    assert (await response.json())["locale"] == "de"

    # A resend keeps the language: the event and the new mail job carry it.
    clock.advance(hours=1)
    response = await client.post(f"/invitations/{inv['id']}/resend")
    assert response.status == 200, await response.text()
    assert (await response.json())["locale"] == "de"
    [resent] = await events(pool, inv["id"], "invitation.resent")
    assert resent["locale"] == "de"
    jobs = await events(pool, inv["id"], "mail.requested")
    assert [j["locale"] for j in jobs] == ["de", "de"]
    listed = await (await client.get(f"/invitations/{inv['id']}")).json()
    assert listed["locale"] == "de"


async def test_without_a_locale_the_agency_default_applies(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    response = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": new_email()}
    )
    inv = (await response.json())["invitation"]
    assert inv["locale"] is None
    [job] = await events(pool, inv["id"], "mail.requested")
    assert job["locale"] is None


async def test_an_unknown_language_is_refused_everywhere(client: Client, world: World) -> None:
    portal = world.add_portal()
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("/invitations", {"portal_id": portal["id"], "email": new_email(), "locale": "it"}),
        ("/invitations/group", {"portal_ids": [portal["id"]], "email": new_email(), "locale": "x"}),
        (
            "/invitations/batch",
            {"portal_id": portal["id"], "rows": [{"email": new_email()}], "locale": "EN"},
        ),
        ("/staff-invitations", {"email": new_email(), "role": "staff", "locale": "de-DE"}),
    ]
    for path, body in bodies:
        response = await client.post(path, json=body)
        assert response.status == 422, (path, await response.text())
        error = (await response.json())["error"]
        assert error == {"code": "invalid_locale", "message": LANGUAGE_MESSAGE}, path


async def test_group_batch_and_staff_invitations_carry_their_locale(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    acme, beta = world.add_portal(title="Acme"), world.add_portal(title="Beta")
    response = await client.post(
        "/invitations/group",
        json={"email": new_email(), "portal_ids": [acme["id"], beta["id"]], "locale": "fr"},
    )
    assert response.status == 201, await response.text()
    made = (await response.json())["invitations"]
    assert [i["locale"] for i in made] == ["fr", "fr"]
    for inv in made:
        [created] = await events(pool, inv["id"], "invitation.created")
        assert created["locale"] == "fr"
    [job] = await events(pool, made[0]["group_id"], "mail.requested")
    assert job["locale"] == "fr"

    email = new_email()
    response = await client.post(
        "/invitations/batch",
        json={"portal_id": acme["id"], "rows": [{"email": email}], "locale": "es"},
    )
    assert response.status == 200, await response.text()
    [result] = (await response.json())["results"]
    assert result["status"] == "created"
    invitation_id = result["invitation_id"]
    [created] = await events(pool, invitation_id, "invitation.created")
    [job] = await events(pool, invitation_id, "mail.requested")
    assert created["locale"] == job["locale"] == "es"

    response = await client.post(
        "/staff-invitations", json={"email": new_email(), "role": "staff", "locale": "de"}
    )
    assert response.status == 201, await response.text()
    staff = (await response.json())["invitation"]
    assert staff["locale"] == "de"
    [job] = await events(pool, staff["id"], "mail.requested")
    assert job["template"] == "staff_invitation" and job["locale"] == "de"
