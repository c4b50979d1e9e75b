"""Issue 20, several portals, one invitation, on the real stack: POST /api/v1/invitations
sends one email naming every portal; a portal archived in between and an invitation
revoked in between block nothing: accepting the one link grants each portal still
Active, announces each acceptance, and leaves the others as they were. A retried request
sends no second email; invitation.requested takes portal_ids too."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e.conftest import Browser, Stack
from tests.e2e.flows import (
    Api,
    accept_from_email,
    admin_amqp_url,
    envelope,
    listening,
    publish_event,
    unique_email,
)
from tests.support.forms import find_form
from tests.support.smtp import html_part, text_part
from tests.support.stack import db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_one_invitation_accepts_every_portal_still_active(
    stack: Stack, api: Api, browser: Browser
) -> None:
    tag = uuid.uuid4().hex[:6]
    acme, beta, gamma, delta = [
        await api.portal(f"{name} {tag}") for name in ("Acme", "Beta", "Gamma", "Delta")
    ]
    email = unique_email("several")
    body = {
        "email": email,
        "portal_ids": [p["id"] for p in (acme, beta, gamma, delta)],
        "personal_message": "All four projects, one login.",
    }
    key = f"crm-several-{tag}"
    async with listening(
        stack,
        "invitation.created",
        "invitation.accepted",
        "portal.access.granted",
        url=admin_amqp_url(stack),  # a program that may read portal events too
    ) as listener:
        async with api.session.post(
            api.base + "/invitations", json=body, headers={"Idempotency-Key": key}
        ) as response:
            assert response.status == 201, await response.text()
            made = await response.json()
        group_id = made["group_id"]
        by_portal = {i["portal_id"]: i for i in made["invitations"]}
        assert list(by_portal) == body["portal_ids"]
        # A retry (the caller lost our answer) answers the same and sends nothing.
        async with api.session.post(
            api.base + "/invitations", json=body, headers={"Idempotency-Key": key}
        ) as response:
            assert response.status == 201
            assert (await response.json())["group_id"] == group_id

        [message] = await stack.sink.wait_for(email)
        assert "You're invited to 4 client portals" in message["Subject"]
        for portal in (acme, beta, gamma, delta):
            assert portal["title"] in text_part(message)
            assert f"<strong><bdi>{portal['title']}</bdi></strong>" in html_part(message)
        for portal in (acme, beta, gamma, delta):
            created = await listener.wait_for(
                lambda e, p=portal: (
                    e["type"] == "invitation.created" and e["data"]["portal_id"] == p["id"]
                ),
                "invitation.created",
            )
            assert created["data"]["group_id"] == group_id
            assert created["data"]["idempotency_key"] == key

        # In between: Beta is archived, Gamma's invitation revoked.
        code, archived = await api.call("PATCH", f"/portals/{beta['id']}", {"status": "archived"})
        assert code == 200, archived
        code, revoked = await api.call(
            "POST", f"/invitations/{by_portal[gamma['id']]['id']}/revoke"
        )
        assert code == 200 and revoked["status"] == "revoked", revoked

        code, url, html = await accept_from_email(stack, browser, email)
        assert code == 200, html[:1000]
        assert url.endswith("/client-portal/"), url  # several portals: the list of them
        assert acme["title"] in html and delta["title"] in html
        assert beta["title"] not in html and gamma["title"] not in html

        for portal in (acme, delta):
            accepted = await listener.wait_for(
                lambda e, p=portal: (
                    e["type"] == "invitation.accepted" and e["data"]["portal_id"] == p["id"]
                ),
                "invitation.accepted",
            )
            assert accepted["data"]["group_id"] == group_id
            granted = await listener.wait_for(
                lambda e, p=portal: (
                    e["type"] == "portal.access.granted" and e["data"]["portal_id"] == p["id"]
                ),
                "portal.access.granted",
            )
            assert granted["data"]["idempotency_key"] == key
        accepted_portals = {
            e["data"]["portal_id"] for e in listener.events("invitation.accepted")
        } & {p["id"] for p in (acme, beta, gamma, delta)}
        assert accepted_portals == {acme["id"], delta["id"]}

    statuses = {}
    for portal in (acme, beta, gamma, delta):
        code, inv = await api.call("GET", f"/invitations/{by_portal[portal['id']]['id']}")
        statuses[portal["title"]] = inv["status"]
    assert statuses == {
        acme["title"]: "accepted",
        beta["title"]: "pending",  # its portal isn't Active: left as it was
        gamma["title"]: "revoked",
        delta["title"]: "accepted",
    }
    code, beta_now = await api.call("GET", f"/portals/{beta['id']}")
    assert beta_now["client_id"] is None
    assert len(stack.sink.to(email)) == 1  # one email in all
    # Logged in by the acceptance: each portal it granted opens.
    for portal in (acme, delta):
        code, _, page = await browser.get(f"/client-portal/{portal['slug']}/")
        assert code == 200 and portal["title"] in page


async def test_invitation_requested_with_portal_ids(stack: Stack, api: Api) -> None:
    tag = uuid.uuid4().hex[:6]
    one, two = await api.portal(f"Bus One {tag}"), await api.portal(f"Bus Two {tag}")
    email = unique_email("bus-several")
    key = f"crm-bus-{tag}"
    async with listening(stack, "invitation.created", "invitation.rejected") as listener:
        await publish_event(
            stack,
            envelope(
                {"email": email, "portal_ids": [one["id"], two["id"]], "idempotency_key": key}
            ),
        )
        for portal in (one, two):
            await listener.wait_for(
                lambda e, p=portal: (
                    e["type"] == "invitation.created"
                    and e["data"]["portal_id"] == p["id"]
                    and e["data"]["idempotency_key"] == key
                ),
                "invitation.created",
            )
        groups = {
            e["data"]["group_id"]
            for e in listener.events("invitation.created")
            if e["data"]["idempotency_key"] == key
        }
        assert len(groups) == 1 and None not in groups
        [message] = await stack.sink.wait_for(email)
        assert one["title"] in text_part(message) and two["title"] in text_part(message)

        bad_key = f"crm-bus-bad-{tag}"
        await publish_event(
            stack,
            envelope(
                {"email": email, "portal_ids": [one["id"], one["id"]], "idempotency_key": bad_key}
            ),
        )
        rejected = await listener.wait_for(
            lambda e: (
                e["type"] == "invitation.rejected" and e["data"]["idempotency_key"] == bad_key
            ),
            "invitation.rejected",
        )
        assert rejected["data"]["reason"] == "duplicate_portal"


async def test_send_invitation_for_several_portals_clicked_twice_sends_one_email(
    stack: Stack, api: Api, admin: Browser
) -> None:
    """Invite Client for the portals ticked on All Portals: Send Invitation clicked twice,
    then the form posted again after the back button: one email, and every page says it
    was sent. (The second post used to be refused: "already has a pending invitation".)"""
    tag = uuid.uuid4().hex[:6]
    one, two = [await api.portal(f"{name} {tag}") for name in ("Twice One", "Twice Two")]
    email = unique_email("several-twice")
    code, url, form_page = await admin.get(
        f"/admin/portals/invite?portal_id={one['id']}&portal_id={two['id']}"
    )
    assert code == 200, form_page[:1000]
    # The form as a browser posts it: each ticked portal's hidden portal_id.
    data = find_form(form_page, "Send Invitation").fill({"Email": email})
    posted = [(k, v) for k, v in data.items() if k != "portal_id"]
    posted += [("portal_id", one["id"]), ("portal_id", two["id"])]

    async def send() -> tuple[int, str]:
        async with admin.session.post(url, data=posted) as response:
            return response.status, await response.text()

    pages = list(await asyncio.gather(send(), send()))
    pages.append(await send())  # back, Send Invitation
    for code, page in pages:
        assert code == 200 and f"Invitation sent to {email}" in page, page[:3000]
    rows = await db_fetch(
        stack,
        "SELECT portal_id::text, send_count FROM invitations.invitations WHERE email = $1",
        email,
    )
    assert sorted((r["portal_id"], r["send_count"]) for r in rows) == sorted(
        [(one["id"], 1), (two["id"], 1)]
    ), rows
    [message] = await stack.sink.wait_for(email)
    assert "You're invited to 2 client portals" in message["Subject"]
