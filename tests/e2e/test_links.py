"""Issue 20's links half on the real stack (five processes, the SMTP sink, the broker):
the expired page says when and Email me a new link sends one that accepts; the reminder
goes through the real sweep (its time moved in the database, never waited for); Resend
is refused for a portal that isn't Active; the cap on one invitation's emails."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.e2e.conftest import Browser, Stack
from tests.e2e.flows import Api, accept_from_email, listening, unique_email
from tests.support.smtp import accept_link
from tests.support.stack import db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _main(page: str) -> str:
    """The page's content without the per-request CSRF token."""
    match = re.search(r"<main[^>]*>(.*)</main>", page, re.S)
    body = match.group(1) if match else page
    return re.sub(r'value="[^"]{20,}"', 'value=""', body)


async def _id(stack: Stack, email: str) -> uuid.UUID:
    rows = await db_fetch(
        stack, "SELECT id FROM invitations.invitations WHERE email_lower = lower($1)", email
    )
    assert len(rows) == 1
    return uuid.UUID(str(rows[0]["id"]))


async def test_an_expired_link_says_when_and_a_new_link_accepts(
    stack: Stack, api: Api, browser: Browser
) -> None:
    portal = await api.portal(f"Expired Again {uuid.uuid4().hex[:6]}")
    email = unique_email("late")
    await api.invite(portal["id"], email)
    link = accept_link((await stack.sink.wait_for(email))[-1])
    # Test setup: the link's end moves into the past (as the clock would move it).
    await db_fetch(
        stack,
        "UPDATE invitations.invitations SET sent_at = timestamptz '2026-01-01 09:00Z',"
        " expires_at = timestamptz '2026-01-15 09:00Z' WHERE id = $1",
        await _id(stack, email),
    )
    code, url, page = await browser.get(link)
    assert code == 410 and "This invitation has expired" in page
    assert "This link expired on <strong><time datetime=" in page
    assert ">2026-01-15 09:00 UTC</time></strong>." in page
    assert email not in page and portal["title"] not in page

    # A token we never sent gets the very same answer (and sends nothing to anyone).
    code, _, stranger = await browser.submit(
        url, page, "Email me a new link", extra={"token": "never-one-of-ours"}
    )
    assert code == 202
    async with listening(stack, "invitation.resent") as bus:
        code, _, answer = await browser.submit(url, page, "Email me a new link")
        assert code == 202 and "Check your email" in answer
        assert _main(answer) == _main(stranger)
        event = await bus.wait_for(lambda e: e["data"]["email"] == email, "invitation.resent")
    assert event["data"]["reason"] == "requested_by_invitee"
    messages = await stack.sink.wait_for(email, count=2)
    assert accept_link(messages[-1]) != link
    code, url, page = await accept_from_email(stack, browser, email)
    assert url.endswith(f"/client-portal/{portal['slug']}/"), url
    code, _, page = await browser.get(link)  # the expired link, now of a used invitation
    assert code == 409 and "already been used" in page


async def test_the_reminder_goes_once_with_a_fresh_link(
    stack: Stack, api: Api, browser: Browser
) -> None:
    code, body = await api.call("PUT", "/settings/access", {"invitation_reminder_days": 1})
    assert code == 200 and body["invitation_reminder_days"] == 1, body
    try:
        portal = await api.portal(f"Reminded {uuid.uuid4().hex[:6]}")
        email = unique_email("remind")
        await api.invite(portal["id"], email)
        first = accept_link((await stack.sink.wait_for(email))[-1])
        async with listening(stack, "invitation.reminded") as bus:
            # Test setup: the invitation ends in 12 hours; the sweep (every second in the
            # test stack) finds it inside the 1-day window.
            await db_fetch(
                stack,
                "UPDATE invitations.invitations SET sent_at = now() - interval '13 days',"
                " expires_at = now() + interval '12 hours' WHERE id = $1",
                await _id(stack, email),
            )
            event = await bus.wait_for(lambda e: e["data"]["email"] == email, "invitation.reminded")
        assert event["version"] == 1 and "token" not in str(event)
        messages = await stack.sink.wait_for(email, count=2)
        reminder = messages[-1]
        assert str(reminder["Subject"]).startswith(
            f"Reminder: your invitation to {portal['title']}"
        )
        fresh = accept_link(reminder)
        assert fresh != first

        code, _, page = await browser.get(first)
        assert code == 410 and "This link was replaced by a newer one" in page
        code, page = await api.call("GET", f"/invitations?portal_id={portal['id']}")
        [shown] = page["items"]
        assert shown["reminded_at"] and shown["send_reason"] == "reminder"
        rows = await db_fetch(
            stack,
            "SELECT count(*) AS n FROM invitations.invitation_links WHERE invitation_id = $1",
            await _id(stack, email),
        )
        assert rows[0]["n"] == 2
        code, url, page = await accept_from_email(stack, browser, email)
        assert url.endswith(f"/client-portal/{portal['slug']}/"), url
        assert len(stack.sink.to(email)) == 2  # one reminder, however many sweeps ran
    finally:
        await api.call("PUT", "/settings/access", {"invitation_reminder_days": 0})


async def test_resend_is_refused_for_a_portal_that_is_not_active(
    stack: Stack, api: Api, admin: Browser
) -> None:
    portal = await api.portal(f"Archived Later {uuid.uuid4().hex[:6]}")
    email = unique_email("archived")
    code, body = await api.invite(portal["id"], email)
    invitation_id = body["invitation"]["id"]
    code, patched = await api.call("PATCH", f"/portals/{portal['id']}", {"status": "archived"})
    assert code == 200, patched

    code, body = await api.call("POST", f"/invitations/{invitation_id}/resend")
    assert code == 409 and body["error"]["code"] == "portal_not_active", body
    assert "is Archived" in body["error"]["message"]

    code, url, page = await admin.get(f"/admin/invitations?portal_id={portal['id']}")
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", page, re.S) if email in r)
    code, _, page = await admin.submit(url, row, "Resend")
    assert code == 409 and "Not resent" in page and "Make the portal Active first." in page
    assert len(stack.sink.to(email)) == 1


async def test_a_link_to_a_portal_that_is_not_active_makes_no_account_until_it_is(
    stack: Stack, api: Api
) -> None:
    """One portal's link behaves as a link for several does: while its portal is Pending
    or Archived the page says the portal isn't available and nothing is made (no account,
    no access, the invitation still pending); once the portal is Active again, the same
    link accepts."""
    portal = await api.portal(f"Paused {uuid.uuid4().hex[:6]}")
    email = unique_email("paused")
    code, body = await api.invite(portal["id"], email)
    assert code == 201, body
    invitation_id = body["invitation"]["id"]
    link = accept_link((await stack.sink.wait_for(email))[-1])
    code, patched = await api.call("PATCH", f"/portals/{portal['id']}", {"status": "archived"})
    assert code == 200, patched

    browser = Browser(stack.public_url)
    try:
        code, url, page = await browser.get(link)
        assert code == 409 and "available at the moment" in page, (code, page[:400])
        assert "Set Password" not in page
        # A form posted before the portal was archived makes nothing either.
        token = link.split("token=", 1)[1]
        fields = {"token": token, "password": "a-long-client-password-7"}
        code, _, page = await browser.submit(
            url,
            f'<form method="post" action="/invitations/accept">'
            f'<input name="csrf_token" value="{_csrf(browser)}">'
            f'<input name="token" value="{token}"><label for="p">Password</label>'
            f'<input id="p" name="password"><label for="c">Confirm Password</label>'
            f'<input id="c" name="confirm"><button>Set Password</button></form>',
            "Set Password",
            {"Password": fields["password"], "Confirm Password": fields["password"]},
        )
        assert code == 409 and "available at the moment" in page, (code, page[:400])
        users = await db_fetch(
            stack, "SELECT id FROM identity.users WHERE lower(email) = lower($1)", email
        )
        assert users == []
        code, shown = await api.call("GET", f"/invitations/{invitation_id}")
        assert shown["status"] == "pending", shown

        code, patched = await api.call("PATCH", f"/portals/{portal['id']}", {"status": "active"})
        assert code == 200, patched
        code, url, page = await browser.get(link)
        assert code == 200 and "Set Password" in page
        code, url, page = await browser.submit(
            url,
            page,
            "Set Password",
            {"Password": fields["password"], "Confirm Password": fields["password"]},
        )
        assert code == 200 and url.endswith(f"/client-portal/{portal['slug']}/"), (code, url)
    finally:
        await browser.close()


def _csrf(browser: Browser) -> str:
    return next(m.value for m in browser.session.cookie_jar if m.key == "cp_csrf")


async def test_one_invitation_is_emailed_at_most_five_times_an_hour(stack: Stack, api: Api) -> None:
    portal = await api.portal(f"Capped {uuid.uuid4().hex[:6]}")
    email = unique_email("capped")
    code, body = await api.invite(portal["id"], email)
    invitation_id = body["invitation"]["id"]
    for _ in range(4):
        code, body = await api.call("POST", f"/invitations/{invitation_id}/resend")
        assert code == 200, body
    async with api.session.post(f"{api.base}/invitations/{invitation_id}/resend") as response:
        assert response.status == 429
        assert 3000 < int(response.headers["Retry-After"]) <= 3600
        error = (await response.json())["error"]
    assert error["code"] == "send_rate_limited" and error["retry_at"]
    assert "emailed 5 times in the last hour" in error["message"]
    assert re.search(r"The next email can go at \d{4}-\d\d-\d\d \d\d:\d\d UTC\.", error["message"])
    messages = await stack.sink.wait_for(email, count=5)
    assert len(messages) == 5
