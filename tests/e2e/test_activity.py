"""Activity (issue 15), through the running stack: every change a staff member makes on
the admin screens, or a key makes through /api/v1, lands in the log (kept by identity,
built from the bus) with who made it; an invitee's own acceptance is nobody's change;
GET /api/v1/activity pages newest first and filters by actor, action and portal."""

from __future__ import annotations

import html as htmlmod
import re
import uuid
from typing import Any

import aiohttp
import pytest

from services.gateway.contracts import ActivityPage
from services.gateway.views.openapi import OPENAPI
from tests.e2e.conftest import ADMIN_EMAIL, Browser, Stack
from tests.e2e.flows import Api, accept_from_email, create_portal, eventually, unique_email

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _row(page: str, text: str) -> str:
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        if htmlmod.escape(text) in row:
            return str(row)
    raise AssertionError(f"no row with {text!r}")


async def _log(api: Api, **query: str) -> list[dict[str, Any]]:
    """Every entry matching ``query``, newest first, through all of its pages."""
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        path = "/activity?" + "&".join(f"{k}={v}" for k, v in params.items())
        code, page = await api.call("GET", path)
        assert code == 200, page
        items += page["items"]
        if not page["next_cursor"]:
            return items
        cursor = page["next_cursor"]


async def _recorded(api: Api, expected: set[tuple[str, str]], **query: str) -> list[Any]:
    """Wait until the log (filtered by ``query``) holds every (action, object label)."""

    async def check() -> list[Any] | None:
        items = await _log(api, **query)
        seen = {(i["action"], i["object"]["label"]) for i in items}
        return items if expected <= seen else None

    return await eventually(check, f"activity {sorted(expected)}", timeout=30)


async def test_every_change_on_the_admin_screens_is_recorded_with_the_staff_member(
    stack: Stack, admin: Browser, api: Api, browser: Browser
) -> None:
    code, users = await api.call("GET", f"/users?q={ADMIN_EMAIL}")
    admin_id = next(u["id"] for u in users["items"] if u["email"] == ADMIN_EMAIL)

    # A client (invited and accepted through the API key, on a portal of their own).
    home = await api.portal(f"Home {uuid.uuid4().hex[:6]}")
    client = unique_email("activity-client")
    await api.invite(home["id"], client)
    await accept_from_email(stack, browser, client)

    # Portal created, then updated, in the editor.
    title = f"Activity Portal {uuid.uuid4().hex[:6]}"
    editor_url, html = await create_portal(admin, title, "words")
    portal_id = editor_url.rstrip("/").rsplit("/", 1)[-1]
    code, editor_url, html = await admin.submit(
        editor_url, html, "Save Portal", {"Content": "new words", "Client": client}
    )
    assert code == 200, html[:1000]
    code, editor_url, html = await admin.submit(
        editor_url, html, "Save Portal", {"Content": "new words", "Client": ""}
    )
    assert code == 200, html[:1000]

    # An invitation sent, resent and revoked.
    invitee = unique_email("activity-invitee")
    code, _, html = await admin.submit(editor_url, html, "Send Invitation", {"Email": invitee})
    assert code == 200, html[:1000]
    code, url, page = await admin.get(f"/admin/invitations?portal_id={portal_id}")
    code, url, page = await admin.submit(url, _row(page, invitee), "Resend")
    assert code == 200 and "resent" in page, page[:1000]
    code, url, page = await admin.get(f"/admin/invitations?portal_id={portal_id}")
    code, url, page = await admin.submit(url, _row(page, invitee), "Revoke")
    assert code == 200 and "revoked" in page, page[:1000]

    # The client's role changed, disabled, enabled.
    code, url, page = await admin.get(f"/admin/users?q={client}")
    code, url, page = await admin.submit(
        url, _row(page, client), "Change Role", {f"Role of {client}": "staff"}
    )
    assert code == 200, page[:1000]
    code, url, page = await admin.get(f"/admin/users?q={client}")
    code, url, page = await admin.submit(url, _row(page, client), "Disable")
    assert code == 200, page[:1000]
    code, url, page = await admin.get(f"/admin/users?q={client}")
    code, url, page = await admin.submit(url, _row(page, client), "Enable")
    assert code == 200, page[:1000]

    # Settings changed (put back afterwards), a key created and revoked.
    code, url, page = await admin.get("/admin/settings")
    code, url, page = await admin.submit(
        url, page, "Save Settings", {"Invitation Link Expiry": "21", "Login Redirect": "on"}
    )
    assert code == 200, page[:1000]
    code, body = await api.call(
        "PUT", "/settings/access", {"invitation_expiry_days": 14, "login_redirect": False}
    )
    assert code == 200, body
    key_name = f"Activity key {uuid.uuid4().hex[:6]}"
    code, url, page = await admin.get("/admin/settings/api-keys")
    code, url, page = await admin.submit(
        url, page, "Create Key", {"Name": key_name, "portals:read": "portals:read"}
    )
    assert code == 201, page[:1000]
    code, url, page = await admin.get("/admin/settings/api-keys")
    code, url, page = await admin.submit(url, _row(page, key_name), "Revoke")
    assert code == 200, page[:1000]

    expected = {
        ("portal.created", title),
        ("portal.updated", title),
        ("portal.access_granted", client),
        ("portal.access_removed", client),
        ("invitation.sent", invitee),
        ("invitation.resent", invitee),
        ("invitation.revoked", invitee),
        ("user.role_changed", client),
        ("user.disabled", client),
        ("user.enabled", client),
        ("settings.changed", "Access & Login"),
        ("key.created", key_name),
        ("key.revoked", key_name),
    }
    mine = await _recorded(api, expected, actor=admin_id, limit="200")
    for item in mine:
        assert item["actor"] == {"type": "user", "id": admin_id, "name": ADMIN_EMAIL}, item
    ours = [i for i in mine if (i["action"], i["object"]["label"]) in expected]
    times = [i["occurred_at"] for i in mine]
    assert times == sorted(times, reverse=True)  # newest first
    by_action = {i["action"]: i for i in ours}
    assert by_action["user.role_changed"]["details"] == {"role": "staff", "previous_role": "client"}
    assert by_action["invitation.sent"]["details"] == {"invited_by": ADMIN_EMAIL}
    assert by_action["invitation.sent"]["portal_id"] == portal_id
    settings = [i["details"]["changes"] for i in ours if i["action"] == "settings.changed"]
    assert {"invitation_expiry_days": 21} in settings and {"login_redirect": True} in settings

    # The client's own acceptance granted access on their home portal: nobody's change.
    home_log = await _log(api, portal_id=home["id"])
    assert [(i["action"], i["actor"]["name"]) for i in home_log] == [
        ("invitation.sent", "bootstrap"),
        ("portal.created", "bootstrap"),
    ]

    # Filters: by portal, by action (each with its own entries only), and short pages.
    on_portal = await _log(api, portal_id=portal_id)
    assert {i["portal_id"] for i in on_portal} == {portal_id}
    assert {i["action"] for i in on_portal} >= {"portal.created", "invitation.revoked"}
    revoked = await _log(api, action="invitation.revoked", actor=admin_id)
    assert {i["action"] for i in revoked} == {"invitation.revoked"}
    assert invitee in {i["object"]["label"] for i in revoked}
    paged = await _log(api, actor=admin_id, limit="3")  # several pages of three
    ids = [i["id"] for i in paged]
    assert len(ids) == len(set(ids)) and set(ids) >= {i["id"] for i in mine}
    assert [i["occurred_at"] for i in paged] == sorted(
        (i["occurred_at"] for i in paged), reverse=True
    )


async def test_changes_made_with_a_key_are_recorded_with_the_key(stack: Stack, api: Api) -> None:
    name = f"CRM {uuid.uuid4().hex[:6]}"
    code, made = await api.call(
        "POST", "/keys", {"name": name, "scopes": ["portals:write", "invitations:write"]}
    )
    assert code == 201, made
    headers = {"Authorization": f"Bearer {made['key']}"}
    base = stack.public_url + "/api/v1"
    title = f"Key Portal {uuid.uuid4().hex[:6]}"
    email = unique_email("by-key")
    async with aiohttp.ClientSession(headers=headers) as crm:
        async with crm.post(base + "/portals", json={"title": title, "status": "active"}) as r:
            assert r.status == 201
            portal = await r.json()
        renamed = {"title": f"{title} (renamed)"}
        async with crm.patch(base + f"/portals/{portal['id']}", json=renamed) as r:
            assert r.status == 200
        invite = {"email": email, "invited_by": "Dana Lee"}
        async with crm.post(base + f"/portals/{portal['id']}/invitations", json=invite) as r:
            assert r.status == 201
            invitation = (await r.json())["invitation"]
        async with crm.post(base + f"/invitations/{invitation['id']}/revoke") as r:
            assert r.status == 200
        # Reading the log is for administrators: a key can't, whatever its scopes.
        async with crm.get(base + "/activity") as r:
            assert r.status == 403

    expected = {
        ("portal.created", title),
        ("portal.updated", f"{title} (renamed)"),
        ("invitation.sent", email),
        ("invitation.revoked", email),
    }
    items = await _recorded(api, expected, actor=made["id"])
    assert {i["actor"]["type"] for i in items} == {"key"}
    assert {i["actor"]["name"] for i in items} == {name}
    sent = next(i for i in items if i["action"] == "invitation.sent")
    assert sent["details"] == {"invited_by": "Dana Lee"}  # the name the request gave
    # The bootstrap key made the key: recorded as the bootstrap key.
    created = await _recorded(api, {("key.created", name)}, actor="bootstrap")
    assert {i["actor"]["type"] for i in created} == {"key"}


async def test_a_staff_invitations_entries_are_what_the_published_document_says(
    api: Api,
) -> None:
    # Found by fuzzing /api/v1 against its own OpenAPI document: a staff invitation's
    # entries name their object "staff_invitation", a type the document's enum left out,
    # so a client generated from the document refused the whole page.
    email = unique_email("activity-staff")
    code, made = await api.call("POST", "/staff-invitations", {"email": email, "role": "staff"})
    assert code == 201, made
    items = await _recorded(api, {("user.invited", email)}, action="user.invited")
    entry = next(i for i in items if i["object"]["label"] == email)
    assert entry["object"]["type"] == "staff_invitation"
    documented = OPENAPI["components"]["schemas"]["ActivityObject"]["properties"]["type"]
    assert "staff_invitation" in documented["enum"]
    # The page as served is the document's ActivityPage, every entry of it.
    code, page = await api.call("GET", "/activity?action=user.invited")
    assert code == 200, page
    ActivityPage.model_validate(page)
