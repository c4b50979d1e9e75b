"""The invitation lifecycle through the gateway on the real stack: the expiry setting,
expired links and the sweep, resend, revoke, inviting again, existing accounts, the
Invitations screen and email addresses."""

from __future__ import annotations

import asyncio
import html as htmlmod
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.e2e.conftest import Browser, Stack
from tests.e2e.flows import (
    CLIENT_PASSWORD,
    Api,
    accept_from_email,
    create_portal,
    eventually,
    invite,
    listening,
    unique_email,
)
from tests.support.smtp import accept_link, html_part, text_part
from tests.support.stack import db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
async def expiry_restored(api: Api) -> AsyncIterator[None]:
    """The setting is shared by the session's stack: put the default back afterwards."""
    yield
    code, body = await api.call("PUT", "/settings/access", {"invitation_expiry_days": 14})
    assert code == 200, body


def _main(page: str) -> str:
    """The page's content without the per-request CSRF token."""
    match = re.search(r"<main[^>]*>(.*)</main>", page, re.S)
    body = match.group(1) if match else page
    return re.sub(r'value="[^"]{20,}"', 'value=""', body)


def _row(page: str, email: str) -> str:
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        if htmlmod.escape(email) in row or email in row:
            return str(row)
    raise AssertionError(f"no row for {email} on the Invitations screen")


async def _invitation(stack: Stack, email: str) -> Any:
    rows = await db_fetch(
        stack,
        "SELECT * FROM invitations.invitations WHERE email_lower = lower($1)"
        " ORDER BY created_at DESC",
        email,
    )
    assert rows, f"no invitation for {email}"
    return rows[0]


async def test_expiry_setting_choices_and_refusal(
    stack: Stack, admin: Browser, api: Api, expiry_restored: None
) -> None:
    for days in (7, 14, 21, 30):
        code, body = await api.call("PUT", "/settings/access", {"invitation_expiry_days": days})
        assert code == 200, body
        assert body["invitation_expiry_days"] == days
        code, body = await api.call("GET", "/settings/access")
        assert code == 200 and body["invitation_expiry_days"] == days, body

    code, body = await api.call("PUT", "/settings/access", {"invitation_expiry_days": 10})
    assert code == 422, body
    message = body["error"]["message"]
    assert "invitation_expiry_days" in message and "7, 14, 21 or 30" in message, message
    code, body = await api.call("GET", "/settings/access")
    assert body["invitation_expiry_days"] == 30  # the refused value changed nothing

    code, _, page = await admin.get("/admin/settings")
    assert code == 200
    assert "Invitation Link Expiry" in page and "Save Settings" in page
    expiry_select = re.search(r'<select id="expiry".*?</select>', page, re.S)
    assert expiry_select, page
    options = re.findall(r"<option[^>]*>([^<]+)</option>", expiry_select.group(0))
    assert options == ["7 days", "14 days", "21 days", "30 days"], options
    assert re.search(r'<option value="30" selected>30 days</option>', page)


async def test_expiry_is_fixed_from_the_setting_at_send_time(
    stack: Stack, api: Api, expiry_restored: None
) -> None:
    portal = await api.portal(f"Expiry Fixed {uuid.uuid4().hex[:6]}")
    await api.call("PUT", "/settings/access", {"invitation_expiry_days": 7})
    seven = unique_email("seven")
    code, body = await api.invite(portal["id"], seven)
    assert code == 201 and body["outcome"] == "created", body
    first = body["invitation"]
    sent = datetime.fromisoformat(first["sent_at"])
    assert datetime.fromisoformat(first["expires_at"]) - sent == timedelta(days=7)

    await api.call("PUT", "/settings/access", {"invitation_expiry_days": 30})
    thirty = unique_email("thirty")
    code, body = await api.invite(portal["id"], thirty)
    second = body["invitation"]
    assert datetime.fromisoformat(second["expires_at"]) - datetime.fromisoformat(
        second["sent_at"]
    ) == timedelta(days=30)

    # The old invitation keeps the expiry it was sent with.
    code, page = await api.call("GET", f"/invitations?status=pending&portal_id={portal['id']}")
    listed = {i["email"]: i for i in page["items"]}
    assert listed[seven]["expires_at"] == first["expires_at"]
    assert listed[thirty]["expires_at"] == second["expires_at"]
    row = await _invitation(stack, seven)
    assert row["expires_at"] - row["sent_at"] == timedelta(days=7)

    # Resending fixes a new expiry from the current setting (now 30 days).
    code, resent = await api.call("POST", f"/invitations/{first['id']}/resend")
    assert code == 200, resent
    assert datetime.fromisoformat(resent["expires_at"]) - datetime.fromisoformat(
        resent["sent_at"]
    ) == timedelta(days=30)


async def test_expired_link_page_then_sweep_publishes_expired(
    stack: Stack, admin: Browser, api: Api, browser: Browser
) -> None:
    portal = await api.portal(f"Expired Link {uuid.uuid4().hex[:6]}")
    newcomer = unique_email("expired")
    await api.invite(portal["id"], newcomer)
    # The administrator already has an account: the page must read the same for both.
    code, body = await api.invite(portal["id"], "admin@example.com")
    assert code in (200, 201), body
    newcomer_link = accept_link((await stack.sink.wait_for(newcomer))[-1])
    admin_link = accept_link((await stack.sink.wait_for("admin@example.com"))[-1])
    ids = [(await _invitation(stack, e))["id"] for e in (newcomer, "admin@example.com")]

    async with listening(stack, "invitation.expired") as bus:
        # Test setup: move the end of both links into the past.
        await db_fetch(
            stack,
            "UPDATE invitations.invitations SET sent_at = now() - interval '15 days',"
            " expires_at = now() - interval '1 day' WHERE id = ANY($1::uuid[])",
            ids,
        )
        pages = []
        for link in (newcomer_link, admin_link):
            code, _, page = await browser.get(link)
            assert code == 410, page[:500]
            assert "This invitation has expired" in page
            assert "resend" in page.lower()
            assert 'type="password"' not in page
            pages.append(_main(page))
        assert pages[0] == pages[1], "the expired page differs when an account exists"

        for invitation_id in ids:
            event = await bus.wait_for(
                lambda e, i=str(invitation_id): e["data"]["invitation_id"] == i,
                "invitation.expired",
            )
            assert event["type"] == "invitation.expired" and event["version"] == 1
            assert "token" not in orjson.dumps(event).decode()
    rows = await db_fetch(
        stack, "SELECT status FROM invitations.invitations WHERE id = ANY($1::uuid[])", ids
    )
    assert [r["status"] for r in rows] == ["expired", "expired"]
    code, page = await api.call("GET", f"/invitations?status=expired&portal_id={portal['id']}")
    assert {i["email"] for i in page["items"]} == {newcomer, "admin@example.com"}

    # An expired invitation can be resent: a new link that works.
    code, resent = await api.call("POST", f"/invitations/{ids[0]}/resend")
    assert code == 200 and resent["status"] == "pending", resent
    messages = await stack.sink.wait_for(newcomer, count=2)
    code, url, page = await accept_from_email(stack, browser, newcomer)
    assert url.endswith(f"/client-portal/{portal['slug']}/"), url
    assert len(messages) == 2


async def test_resend_from_the_screen_kills_the_old_link(
    stack: Stack, admin: Browser, api: Api, browser: Browser
) -> None:
    portal = await api.portal(f"Resend Portal {uuid.uuid4().hex[:6]}")
    email = unique_email("resend")
    await api.invite(portal["id"], email)
    old_link = accept_link((await stack.sink.wait_for(email))[-1])

    code, url, page = await admin.get(f"/admin/invitations?portal_id={portal['id']}")
    assert code == 200 and email in page
    row = _row(page, email)
    invitation_id = re.search(r"/admin/invitations/([0-9a-f-]{36})/resend", row)
    assert invitation_id, row
    code, url, page = await admin.submit(url, row, "Resend")  # this row's button
    assert code == 200 and f"Invitation resent to {email}" in page, page[:2000]

    new_link = accept_link((await stack.sink.wait_for(email, count=2))[-1])
    assert new_link != old_link
    code, _, page = await browser.get(old_link)
    assert code == 410 and "This link was replaced by a newer one" in page
    code, url, page = await accept_from_email(stack, browser, email)
    assert url.endswith(f"/client-portal/{portal['slug']}/"), url
    code, _, page = await Browser(stack.public_url).get(old_link)
    assert code == 409 and "This invitation has already been used" in page

    # Accepted: nothing more to resend or revoke.
    code, body = await api.call("POST", f"/invitations/{invitation_id.group(1)}/resend")
    assert code == 409 and body["error"]["code"] == "invitation_accepted", body


async def test_resend_clicked_twice_or_again_with_back_sends_one_email(
    stack: Stack, admin: Browser, api: Api, browser: Browser
) -> None:
    """Resend clicked twice in a row posts the row's form twice at once, and the back button
    then Resend a third time: one new email, whose link works. (Each post used to send a
    new link: three emails, and the first two dead.)"""
    portal = await api.portal(f"Resend Twice {uuid.uuid4().hex[:6]}")
    email = unique_email("resend-twice")
    await api.invite(portal["id"], email)
    await stack.sink.wait_for(email)
    code, url, page = await admin.get(f"/admin/invitations?portal_id={portal['id']}")
    row = _row(page, email)
    pages = await asyncio.gather(admin.submit(url, row, "Resend"), admin.submit(url, row, "Resend"))
    for code, _, page in pages:
        assert code == 200 and f"Invitation resent to {email}" in page, page[:2000]
    code, _, page = await admin.submit(url, row, "Resend")  # back, Resend
    assert code == 200 and f"Invitation resent to {email}" in page, page[:2000]
    invitation = await _invitation(stack, email)
    assert invitation["send_count"] == 2, dict(invitation)
    code, _, page = await browser.get(accept_link((await stack.sink.wait_for(email, count=2))[-1]))
    assert code == 200 and "Set Password" in page

    # The screen shown again: its Resend sends a new link.
    code, url, page = await admin.get(f"/admin/invitations?portal_id={portal['id']}")
    code, _, page = await admin.submit(url, _row(page, email), "Resend")
    assert code == 200 and f"Invitation resent to {email}" in page, page[:2000]
    assert (await _invitation(stack, email))["send_count"] == 3


async def test_resend_of_the_selected_clicked_twice_sends_one_email(
    stack: Stack, admin: Browser, api: Api
) -> None:
    """Resend for the selected rows clicked twice, then again after the back button: one
    new email. (Each post used to send a new link.)"""
    portal = await api.portal(f"Bulk Twice {uuid.uuid4().hex[:6]}")
    email = unique_email("bulk-twice")
    code, body = await api.invite(portal["id"], email)
    await stack.sink.wait_for(email)
    code, url, page = await admin.get(f"/admin/invitations?portal_id={portal['id']}")
    fields = {f"Select {email}": body["invitation"]["id"]}
    extra = {"action": "resend"}

    async def resend() -> tuple[int, str, str]:
        return await admin.submit(url, page, "Resend", fields, extra)

    pages = list(await asyncio.gather(resend(), resend()))
    pages.append(await resend())  # back, Resend
    for code, _, shown in pages:
        assert code == 200 and "1 resent" in shown, shown[:2000]
    assert (await _invitation(stack, email))["send_count"] == 2


async def test_revoke_from_the_screen_kills_the_link_and_refuses_resend(
    stack: Stack, admin: Browser, api: Api, browser: Browser
) -> None:
    portal = await api.portal(f"Revoke Portal {uuid.uuid4().hex[:6]}")
    email = unique_email("revoke")
    await api.invite(portal["id"], email)
    link = accept_link((await stack.sink.wait_for(email))[-1])
    code, _, page = await browser.get(link)
    assert code == 200 and "Set Password" in page

    async with listening(stack, "invitation.revoked") as bus:
        code, url, page = await admin.get(f"/admin/invitations?portal_id={portal['id']}")
        row = _row(page, email)
        invitation_id = re.search(r"/admin/invitations/([0-9a-f-]{36})/revoke", row)
        assert invitation_id, row
        code, url, page = await admin.submit(url, row, "Revoke")
        assert code == 200 and f"Invitation to {email} revoked." in page, page[:2000]
        await bus.wait_for(
            lambda e: e["data"]["invitation_id"] == invitation_id.group(1), "invitation.revoked"
        )

    code, _, page = await browser.get(link)
    assert code == 410 and "This invitation has been revoked" in page
    assert "Set Password" not in page
    code, body = await api.call("POST", f"/invitations/{invitation_id.group(1)}/resend")
    assert code == 409 and body["error"]["code"] == "invitation_revoked", body
    code, page = await api.call("GET", f"/invitations?status=revoked&portal_id={portal['id']}")
    assert [i["email"] for i in page["items"]] == [email]
    assert len(stack.sink.to(email)) == 1


async def test_inviting_again_resends_the_pending_invitation(
    stack: Stack, admin: Browser, api: Api, browser: Browser
) -> None:
    editor_url, editor_html = await create_portal(admin, "Invite Twice", "twice")
    portal_id = editor_url.rstrip("/").rsplit("/", 1)[-1]
    email = unique_email("twice")
    page = await invite(admin, editor_url, editor_html, email)
    assert f"Invitation sent to {email}" in page
    first_link = accept_link((await stack.sink.wait_for(email))[-1])

    page = await invite(admin, editor_url, page, email)
    assert f"An invitation was already pending for {email}; it has been resent." in page

    code, body = await api.invite(portal_id, email)
    assert code == 200 and body["outcome"] == "resent", body
    messages = await stack.sink.wait_for(email, count=3)
    code, listed = await api.call("GET", f"/invitations?portal_id={portal_id}")
    assert [i["email"] for i in listed["items"]] == [email]  # one invitation, not three
    assert listed["items"][0]["send_count"] == 3
    code, _, page = await browser.get(first_link)
    assert code == 410 and "This link was replaced by a newer one" in page
    code, _, page = await browser.get(accept_link(messages[-1]))
    assert code == 200 and "Set Password" in page


async def test_send_invitation_clicked_twice_or_sent_again_with_back_sends_one_email(
    stack: Stack, admin: Browser, api: Api
) -> None:
    """A double click on Send Invitation posts the same form twice at once, and the back
    button then Send Invitation posts it a third time: one email, whose link works. (Each
    post used to resend: three emails, and the first two links dead.)"""
    editor_url, editor_html = await create_portal(admin, "Invite Double Click", "double")
    portal_id = editor_url.rstrip("/").rsplit("/", 1)[-1]
    email = unique_email("double")
    pages = await asyncio.gather(
        invite(admin, editor_url, editor_html, email),
        invite(admin, editor_url, editor_html, email),
    )
    for page in pages:
        assert f"Invitation sent to {email}" in page
    page = await invite(admin, editor_url, editor_html, email)  # back, Send Invitation
    assert f"Invitation sent to {email}" in page
    code, listed = await api.call("GET", f"/invitations?portal_id={portal_id}")
    assert code == 200 and [i["email"] for i in listed["items"]] == [email], listed
    assert listed["items"][0]["send_count"] == 1, listed["items"][0]
    code, _, page = await admin.get(accept_link((await stack.sink.wait_for(email))[-1]))
    assert code == 200 and "Set Password" in page

    # The editor shown again, its Send Invitation clicked twice: one resend, not two.
    code, fresh_url, fresh = await admin.get(editor_url)
    await asyncio.gather(
        invite(admin, fresh_url, fresh, email), invite(admin, fresh_url, fresh, email)
    )
    assert (await _invitation(stack, email))["send_count"] == 2

    # The same form with another address (back, retyped) is another invitation.
    other = unique_email("double-other")
    page = await invite(admin, editor_url, editor_html, other)
    assert f"Invitation sent to {other}" in page
    await stack.sink.wait_for(other)
    # Revoked meanwhile, the form posted again invites again, as it always did.
    code, _ = await api.call("POST", f"/invitations/{listed['items'][0]['id']}/revoke")
    assert code == 200
    page = await invite(admin, editor_url, editor_html, email)
    assert f"Invitation sent to {email}" in page
    await stack.sink.wait_for(email, count=3)


async def test_invite_staff_clicked_twice_or_sent_again_with_back_sends_one_email(
    stack: Stack, admin: Browser
) -> None:
    """Users → Invite Staff: Send Invitation clicked twice, then the same form posted again
    after the back button: one email; the same for the staff invitation's Resend. (Each
    post used to resend.)"""
    email = unique_email("staff-double")
    code, url, form_page = await admin.get("/admin/users")
    fields = {"Email": email}
    pages = await asyncio.gather(
        admin.submit(url, form_page, "Send Invitation", fields),
        admin.submit(url, form_page, "Send Invitation", fields),
    )
    for code, _, page in pages:
        assert code == 200 and f"Invitation sent to {email}" in page, page[:2000]
    code, _, page = await admin.submit(url, form_page, "Send Invitation", fields)
    assert code == 200 and f"Invitation sent to {email}" in page, page[:2000]
    assert (await _invitation(stack, email))["send_count"] == 1

    # The screen shown again: inviting again resends, as before; clicked twice, once.
    code, url, form_page = await admin.get("/admin/users")
    pages = await asyncio.gather(
        admin.submit(url, form_page, "Send Invitation", fields),
        admin.submit(url, form_page, "Send Invitation", fields),
    )
    assert any(
        f"An invitation was already pending for {email}; it has been resent." in page
        for _, _, page in pages
    )
    assert (await _invitation(stack, email))["send_count"] == 2

    # Its Resend clicked twice, then again after the back button: one new email.
    code, url, page = await admin.get("/admin/users")
    row = _row(page, email)
    pages = await asyncio.gather(admin.submit(url, row, "Resend"), admin.submit(url, row, "Resend"))
    for code, _, page in pages:
        assert code == 200 and f"Invitation resent to {email}" in page, page[:2000]
    code, _, page = await admin.submit(url, row, "Resend")
    assert code == 200 and f"Invitation resent to {email}" in page, page[:2000]
    assert (await _invitation(stack, email))["send_count"] == 3


async def test_existing_account_logs_in_and_lands_on_the_new_portal(
    stack: Stack, admin: Browser, api: Api, browser: Browser
) -> None:
    first = await api.portal(f"First Project {uuid.uuid4().hex[:6]}")
    second = await api.portal(f"Second Project {uuid.uuid4().hex[:6]}")
    email = unique_email("returning")
    await api.invite(first["id"], email)
    code, url, _ = await accept_from_email(stack, browser, email)
    assert url.endswith(f"/client-portal/{first['slug']}/"), url

    welcome = (await stack.sink.wait_for(email))[0]
    assert "set your password" in text_part(welcome) and "set your password" in html_part(welcome)

    code, body = await api.invite(second["id"], email)
    assert code == 201 and body["outcome"] == "created", body
    # The email told a person with an account to set a password, their account "created
    # for" them; the link then asked them to log in. It says what the link will ask, in
    # the first email and in a Resend.
    code, resent = await api.call("POST", f"/invitations/{body['invitation']['id']}/resend")
    assert code == 200, resent
    emails = await stack.sink.wait_for(email, count=3)
    for message in emails[1:]:
        for part in (text_part(message), html_part(message)):
            assert "set your password" not in part and "is created for you" not in part, part
            assert "log in with your account" in part, part
    link = accept_link(emails[-1])
    fresh = Browser(stack.public_url)
    try:
        code, url, page = await fresh.get(link)
        assert code == 200 and "log in to accept" in page, page[:2000]
        assert "Set Password" not in page
        assert re.search(rf'name="email"[^>]*value="{re.escape(email)}"', page), page[:3000]
        code, url, page = await fresh.submit(url, page, "Log In", {"Password": CLIENT_PASSWORD})
        assert code == 200 and url.endswith(f"/client-portal/{second['slug']}/"), url
        code, _, page = await fresh.get("/client-portal/")
        assert code == 200 and first["title"] in page and second["title"] in page
    finally:
        await fresh.close()
    users = await db_fetch(
        stack, "SELECT id FROM identity.users WHERE lower(email) = lower($1)", email
    )
    assert len(users) == 1

    # Already on portal one: refused, through the API and on the editor's screen.
    code, body = await api.invite(first["id"], email)
    assert code == 409 and body["error"]["code"] == "already_has_access", body
    code, url, page = await admin.get(f"/admin/portals/{first['id']}")
    code, url, page = await admin.submit(url, page, "Send Invitation", {"Email": email})
    assert code == 422 and "already has access" in page, page[:2000]
    assert len(stack.sink.to(email)) == 3


async def test_invitations_screen_shows_delivery_and_times(
    stack: Stack, admin: Browser, api: Api
) -> None:
    portal = await api.portal(f"Screen Portal {uuid.uuid4().hex[:6]}")
    email = unique_email("screen")
    code, body = await api.invite(portal["id"], email)
    invitation = body["invitation"]
    await stack.sink.wait_for(email)

    async def delivered() -> str | None:
        _, _, page = await admin.get("/admin/invitations")  # pending is the default view
        row = _row(page, email)
        return row if "<td>Sent" in row else None

    row = await eventually(delivered, "the delivery status Sent on the Invitations screen")
    assert portal["title"] in row and "Pending" in row
    assert f'<time datetime="{invitation["sent_at"]}">' in row
    assert f'<time datetime="{invitation["expires_at"]}">' in row
    assert "Resend" in row and "Revoke" in row
    code, page = await api.call("GET", f"/invitations?portal_id={portal['id']}")
    assert page["items"][0]["delivery"] == "sent"


async def test_email_addresses_are_normalised_or_refused(stack: Stack, api: Api) -> None:
    portal = await api.portal(f"Email Rules {uuid.uuid4().hex[:6]}")
    tag = uuid.uuid4().hex[:8]
    code, body = await api.invite(portal["id"], f"  Alice-{tag}@EXAMPLE.com ")
    assert code == 201, body
    stored = body["invitation"]["email"]
    assert stored.lower() == f"alice-{tag}@example.com" and stored.endswith("@example.com")
    await stack.sink.wait_for(f"alice-{tag}@example.com")

    for bad in (
        f"bad-{tag}@x.com\r\nBcc: spy-{tag}@y.com",
        f"bad-{tag}@x.com, spy-{tag}@y.com",
        f"Alice <bad-{tag}@x.com>",
        f"bad-{tag}@x.com;spy-{tag}@y.com",
    ):
        code, body = await api.invite(portal["id"], bad)
        assert code == 422, (bad, body)
        assert "email" in body["error"]["message"].lower(), body
    rows = await db_fetch(
        stack,
        "SELECT email FROM invitations.invitations WHERE email ILIKE $1",
        f"%{tag}@%",
    )
    assert [r["email"] for r in rows] == [stored]
    mails = await db_fetch(
        stack, "SELECT to_address FROM mailer.deliveries WHERE to_address ILIKE $1", f"%{tag}@%"
    )
    assert [m["to_address"] for m in mails] == [stored]


async def test_an_idempotency_key_makes_a_retried_api_invite_harmless(
    stack: Stack, api: Api
) -> None:
    """A CRM that lost the answer retries with the same Idempotency-Key: the same
    invitation comes back and no second email goes out (without the key it is a Resend)."""
    portal = await api.portal(f"Retry {uuid.uuid4().hex[:6]}")
    email = unique_email("retry")
    path = f"{api.base}/portals/{portal['id']}/invitations"
    key = f"crm-deal-{uuid.uuid4().hex}"

    async def post(body: dict[str, Any], key: str) -> tuple[int, Any]:
        headers = {"Idempotency-Key": key}
        async with api.session.post(path, json=body, headers=headers) as response:
            return response.status, await response.json()

    first_code, first = await post({"email": email}, key)
    again_code, again = await post({"email": email.upper()}, key)
    assert (first_code, again_code) == (201, 201), (first, again)
    assert again["invitation"]["id"] == first["invitation"]["id"]
    await stack.sink.wait_for(email)
    code, listed = await api.call("GET", f"/invitations?portal_id={portal['id']}")
    assert listed["items"][0]["send_count"] == 1
    # The same key for another person is the caller's mistake, not a second invitation.
    code, body = await post({"email": unique_email("other")}, key)
    assert code == 409 and body["error"]["code"] == "idempotency_key_reused", body
    code, body = await post({"email": email}, "x" * 201)
    assert code == 422 and body["error"]["code"] == "invalid_idempotency_key", body
    code, body = await post({"email": email}, "tab\tinside")
    assert code == 422, body
    code, listed = await api.call("GET", f"/invitations?portal_id={portal['id']}")
    assert len(listed["items"]) == 1 and listed["items"][0]["send_count"] == 1
    assert len(stack.sink.to(email)) == 1
