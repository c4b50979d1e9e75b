"""Roles on the real stack: an Administrator makes a client Staff on the Users screen;
Staff work in the admin area (portals, invitations) but every Administrators-only page
and API route refuses them; Disable and Enable; nobody changes or disables their own
account from the screen."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.gateway.security import (
    ADMIN_ONLY_API,
    ADMINISTRATOR_PAGES,
    API_SCOPES,
    STAFF_PAGES,
)
from tests.security.conftest import CLIENT_PASSWORD, api, cookie
from tests.security.flows import Client, new_client, new_portal, post_form, user_id_of
from tests.security.test_api_keys import api_routes
from tests.security.test_routes import concrete, route_table
from tests.support.stack import ADMIN_EMAIL, Browser, Stack, login

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def _make_staff(admin: Browser, client: Client) -> str:
    user_id = await user_id_of(admin, client.email)
    status, html = await post_form(admin, f"/admin/users/{user_id}/role", role="staff")
    assert status == 200 and f"The role of {client.email} was changed." in html, html[:500]
    return user_id


async def test_staff_get_the_admin_area_but_no_administrator_page_or_route(
    stack: Stack, admin: Browser
) -> None:
    client = await new_client(stack, admin)
    await _make_staff(admin, client)
    # A new session at a change of privilege: the Client's ended with the change (on the
    # old code it became a Staff session at once, a planted or copied cookie with it).
    code, url, _ = await client.browser.get(f"/client-portal/{client.portal['slug']}/")
    assert "/login" in url, (code, url)
    await client.browser.close()
    staff = await login(stack, client.email, CLIENT_PASSWORD)
    try:
        code, url, html = await staff.get("/admin/portals")
        assert code == 200 and url.endswith("/admin/portals"), (code, url)
        assert 'href="/admin/invitations"' in html
        assert 'href="/admin/settings"' not in html and 'href="/admin/users"' not in html
        assert 'href="/admin/activity"' not in html
        code, _, _ = await staff.get("/admin/invitations")
        assert code == 200
        # The portal editor's Client and Sub-Clients pickers ask for the users past the
        # first 200 as Staff type: their search answers Staff too.
        code, _, found = await staff.get(f"/admin/users/search?q={client.email}")
        assert code == 200 and client.email in found, (code, found[:200])
        wrong: list[Any] = []
        token = cookie(staff, "cp_csrf")
        for method, pattern in route_table():
            if not pattern.startswith(ADMINISTRATOR_PAGES) or pattern in STAFF_PAGES:
                continue
            path = concrete(pattern)
            if method == "GET":
                code, _, _ = await staff.get(path)
            else:
                async with staff.session.request(
                    method, staff.base + path, data={"csrf_token": token or ""}
                ) as response:
                    code = response.status
            if code != 403:
                wrong.append((method, pattern, code))
        for method, pattern in api_routes():
            status, body = await api(
                staff, method, concrete(pattern), {} if method != "GET" else None
            )
            refused = status in (401, 403)
            if refused != ((method, pattern) in ADMIN_ONLY_API):
                wrong.append((method, pattern, status, body))
        assert not wrong, wrong
        assert set(API_SCOPES) | set(ADMIN_ONLY_API) == set(api_routes())
    finally:
        await staff.close()


async def test_staff_log_in_to_the_admin_area(stack: Stack, admin: Browser) -> None:
    client = await new_client(stack, admin)
    await client.browser.close()
    await _make_staff(admin, client)
    staff = await login(stack, client.email, CLIENT_PASSWORD)
    try:
        assert staff.last_url.endswith("/admin/portals"), staff.last_url
    finally:
        await staff.close()


async def test_disable_and_enable_on_the_users_screen(stack: Stack, admin: Browser) -> None:
    client = await new_client(stack, admin)
    user_id = await user_id_of(admin, client.email)
    status, html = await post_form(admin, f"/admin/users/{user_id}/disable")
    assert status == 200 and f"User {client.email} disabled." in html
    assert re.search(rf'action="/admin/users/{user_id}/enable"', html)
    code, url, _ = await client.browser.get(f"/client-portal/{client.portal['slug']}/")
    assert "/login" in url  # logged out at once
    await client.browser.close()
    status, html = await post_form(admin, f"/admin/users/{user_id}/enable")
    assert status == 200 and f"User {client.email} enabled" in html
    back = await login(stack, client.email, CLIENT_PASSWORD)
    await back.close()


async def test_a_disabled_user_can_not_be_made_client_or_sub_client(
    stack: Stack, admin: Browser
) -> None:
    """Disabling takes a person off every portal, and only a new invitation gives access
    back (the editor's pickers don't even list them). The API and a tampered editor form
    took a disabled user's id as they were: the person, enabled again, was on those
    portals without any invitation."""
    client = await new_client(stack, admin)
    user_id = await user_id_of(admin, client.email)
    await client.browser.close()
    status, html = await post_form(admin, f"/admin/users/{user_id}/disable")
    assert status == 200 and f"User {client.email} disabled." in html
    portal = await new_portal(admin)
    for path, body in (
        (f"/api/v1/portals/{portal['id']}/client", {"user_id": user_id}),
        (f"/api/v1/portals/{portal['id']}/sub-clients", {"user_ids": [user_id]}),
    ):
        status, answer = await api(admin, "PUT", path, body)
        code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
        assert (status, code) == (422, "user_disabled"), (path, status, answer)
    editor = f"/admin/portals/{portal['id']}"
    code, _, page = await admin.get(editor)
    assert code == 200
    for field, message in (
        ("client_id", "Choose an existing user."),
        ("add_sub_client", "Choose existing users."),
    ):
        code, _, html = await admin.submit(
            stack.public_url + editor, page, "Save Portal", extra={field: user_id}
        )
        assert code == 422 and message in html, (field, code, html[:300])
    status, now = await api(admin, "GET", f"/api/v1/portals/{portal['id']}")
    assert (now["client_id"], now["sub_client_ids"]) == (None, []), now
    status, html = await post_form(admin, f"/admin/users/{user_id}/enable")
    assert status == 200 and f"User {client.email} enabled" in html
    back = await login(stack, client.email, CLIENT_PASSWORD)
    try:
        code, _, _ = await back.get(f"/client-portal/{portal['slug']}/")
        assert code == 404
    finally:
        await back.close()


async def test_an_administrator_cant_demote_or_disable_themselves(
    stack: Stack, admin: Browser
) -> None:
    me = await user_id_of(admin, ADMIN_EMAIL.lower())
    status, html = await post_form(admin, f"/admin/users/{me}/role", role="client")
    assert status == 422 and "You can&#39;t change the role of your own account." in html
    status, html = await post_form(admin, f"/admin/users/{me}/disable")
    assert status == 422 and "You can&#39;t disable your own account." in html
    status, html = await post_form(admin, f"/admin/users/{me}/role", role="owner")
    assert status == 422 and "Choose a role" in html
    code, _, _ = await admin.get("/admin/settings")
    assert code == 200  # still an administrator
