"""The gateway's side of issue 20's links half, against the fakes: the pages of links
that no longer work (replaced, expired and when, revoked), Email me a new link (CSRF,
one neutral answer, the per-address limit), Resend refused with its reason on the screen
and through the API, the Invitation Reminder setting and the Invitations screen's notes."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from tests.gateway.conftest import csrf, log_in, make_settings, post_form
from tests.gateway.fakes import Backend

PASSWORD = "correct horse battery"
CSRF = re.compile(r'(name="csrf_token" value=")[^"]+(")')


async def as_admin(gw: TestClient, backend: Backend) -> None:
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)


def _main(html: str) -> str:
    match = re.search(r"<main[^>]*>(.*)</main>", html, re.S)
    assert match, html
    return CSRF.sub(r"\1CSRF\2", match.group(1))


# --- the pages of links that no longer work -------------------------------------------
async def test_a_replaced_link_says_so_and_offers_a_new_one(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("jo@example.com", portal, status="replaced")
    response = await gw.get(f"/invitations/accept?token={token}")
    assert response.status == 410
    html = await response.text()
    assert "<h1>This link was replaced by a newer one</h1>" in html
    assert "This link was replaced by a newer one — use the latest email we sent you." in html
    assert "copied the whole link" not in html
    assert '<form method="post" action="/invitations/accept/new-link">' in html
    assert f'name="token" value="{token}"' in html and 'name="csrf_token"' in html
    assert ">Email me a new link</button>" in html
    # Nothing about whose invitation it is.
    assert "jo@example.com" not in html and "Acme Launch" not in html
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_an_expired_link_says_when_and_offers_a_new_one(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("jo@example.com", portal, status="expired")
    invitation = next(iter(backend.invitations.values()))
    invitation["expires_at"] = "2026-11-20T09:30:00+00:00"
    response = await gw.get(f"/invitations/accept?token={token}")
    assert response.status == 410
    html = await response.text()
    assert "<h1>This invitation has expired</h1>" in html
    assert (
        'This link expired on <strong><time datetime="2026-11-20T09:30:00+00:00">'
        "2026-11-20 09:30 UTC</time></strong>." in html
    )
    assert ">Email me a new link</button>" in html
    assert "jo@example.com" not in html and "Acme Launch" not in html


async def test_a_revoked_link_says_it_was_withdrawn_without_the_button(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("jo@example.com", portal, status="revoked")
    response = await gw.get(f"/invitations/accept?token={token}")
    assert response.status == 410
    html = await response.text()
    assert "<h1>This invitation has been revoked</h1>" in html
    assert "It was withdrawn by whoever sent it." in html
    assert "Email me a new link" not in html and "new-link" not in html


async def test_a_link_we_never_sent_is_still_not_valid(gw: TestClient) -> None:
    response = await gw.get("/invitations/accept?token=nonsense")
    assert response.status == 404
    html = await response.text()
    assert "This invitation link is not valid" in html
    assert "Email me a new link" not in html


async def test_a_post_with_a_link_replaced_meanwhile_shows_the_replaced_page(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("jo@example.com", portal)
    await gw.get(f"/invitations/accept?token={token}")
    next(iter(backend.invitations.values()))["status"] = "replaced"  # staff resent it
    password = "a long new password"
    data = {"token": token, "password": password, "confirm": password}
    response = await post_form(gw, "/invitations/accept", data)
    assert response.status == 410
    html = await response.text()
    assert "This link was replaced by a newer one" in html
    assert ">Email me a new link</button>" in html


# --- Email me a new link ----------------------------------------------------------------
async def test_email_me_a_new_link_answers_alike_for_every_link(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    replaced = backend.add_invitation("jo@example.com", portal, status="replaced")
    revoked = backend.add_invitation("kim@example.com", portal, status="revoked")
    pages = []
    for token in (replaced, revoked, "never-ours", ""):
        response = await post_form(gw, "/invitations/accept/new-link", {"token": token})
        assert response.status == 202
        pages.append(_main(await response.text()))
    assert len(set(pages)) == 1
    page = pages[0]
    assert "<h1>Check your email</h1>" in page
    assert (
        "If this invitation can still be used, a new link is on its way to the address it"
        " was sent to." in page
    )
    assert "@" not in page  # no address, ever
    # Each request reached invitations, which answers before it looks anything up.
    assert backend.new_link_requests == [replaced, revoked, "never-ours", ""]


async def test_email_me_a_new_link_needs_the_forms_csrf_token(
    gw: TestClient, backend: Backend
) -> None:
    await csrf(gw)
    response = await gw.post(
        "/invitations/accept/new-link", data={"token": "t"}, allow_redirects=False
    )
    assert response.status == 403
    forged = await gw.post(
        "/invitations/accept/new-link",
        data={"token": "t", "csrf_token": "x" * 40},
        allow_redirects=False,
    )
    assert forged.status == 403
    assert backend.new_link_requests == []


async def test_email_me_a_new_link_is_limited_per_client_address(
    backend: Backend,
) -> None:
    client = TestClient(TestServer(create_app(make_settings(backend, gateway_rate_per_ip=2))))
    await client.start_server()
    try:
        statuses = []
        for _ in range(3):
            response = await post_form(client, "/invitations/accept/new-link", {"token": "t"})
            statuses.append(response.status)
        assert statuses == [202, 202, 429]
        assert int(response.headers["Retry-After"]) >= 1
        assert len(backend.new_link_requests) == 2
    finally:
        await client.close()


# --- Resend refused, with its reason --------------------------------------------------------
async def test_resend_on_the_screen_says_why_it_was_refused(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    backend.add_invitation("a@b.example", portal)
    invitation = next(iter(backend.invitations.values()))
    message = (
        "The portal 'Acme' is Archived: its invitations can't be resent."
        " Make the portal Active first."
    )
    backend.resend_refusal = (409, "portal_not_active", message, {})
    back = "/admin/invitations?status=all"
    response = await post_form(gw, f"/admin/invitations/{invitation['id']}/resend", {"back": back})
    assert response.status == 409
    html = await response.text()
    assert "<h1>Not resent</h1>" in html and message.replace("'", "&#39;") in html
    assert f'<a class="button" href="{back}">Back to Invitations</a>' in html
    assert invitation["send_count"] == 1

    limited = (
        "This invitation has been emailed 5 times in the last hour."
        " The next email can go at 2026-11-30 14:05 UTC."
    )
    details = {"retry_after": 754, "retry_at": "2026-11-30T14:04:30+00:00"}
    backend.resend_refusal = (429, "send_rate_limited", limited, details)
    response = await post_form(gw, f"/admin/invitations/{invitation['id']}/resend")
    assert response.status == 429 and response.headers["Retry-After"] == "754"
    assert limited in await response.text()
    assert backend.calls.count("invitations.resend:staff") == 2


async def test_resend_through_the_api_passes_the_refusal_on(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    headers = {"X-CSRF-Token": await csrf(gw)}
    portal = backend.add_portal("Acme")
    backend.add_invitation("a@b.example", portal)
    invitation_id = next(iter(backend.invitations))
    ok = await gw.post(f"/api/v1/invitations/{invitation_id}/resend", headers=headers)
    assert ok.status == 200 and backend.calls[-1] == "invitations.resend:api"

    backend.resend_refusal = (409, "portal_not_active", "The portal is Pending.", {})
    refused = await gw.post(f"/api/v1/invitations/{invitation_id}/resend", headers=headers)
    assert refused.status == 409
    assert await refused.json() == {
        "error": {"code": "portal_not_active", "message": "The portal is Pending."}
    }
    details = {"retry_after": 120, "retry_at": "2026-11-30T14:04:30+00:00"}
    backend.resend_refusal = (429, "send_rate_limited", "Next at 14:05 UTC.", details)
    limited = await gw.post(f"/api/v1/invitations/{invitation_id}/resend", headers=headers)
    assert limited.status == 429 and limited.headers["Retry-After"] == "120"
    assert await limited.json() == {
        "error": {"code": "send_rate_limited", "message": "Next at 14:05 UTC.", **details}
    }


async def test_a_pending_invitation_invited_again_says_who_asked(
    gw: TestClient, backend: Backend
) -> None:
    """The JSON API says so (invitation.resent reason api); the editor's Send Invitation
    leaves it to the default, staff."""
    await as_admin(gw, backend)
    headers = {"X-CSRF-Token": await csrf(gw)}
    portal = backend.add_portal("Acme")
    response = await gw.post(
        f"/api/v1/portals/{portal['id']}/invitations",
        json={"email": "a@b.example"},
        headers=headers,
    )
    assert response.status == 201
    assert backend.invite_bodies[-1]["resend_reason"] == "api"
    response = await post_form(
        gw, f"/admin/portals/{portal['id']}/invite", {"email": "c@d.example"}
    )
    assert response.status == 303
    assert "resend_reason" not in backend.invite_bodies[-1]


# --- Settings → Access & Login → Invitation Reminder ---------------------------------------
async def test_settings_page_has_invitation_reminder(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    html = await (await gw.get("/admin/settings")).text()
    assert '<label for="reminder">Invitation Reminder</label>' in html
    assert '<option value="0" selected>Off</option>' in html
    assert '<option value="1">1 day before expiry</option>' in html
    assert '<option value="3">3 days before expiry</option>' in html
    # Next to Invitation Link Expiry.
    assert html.index("Invitation Link Expiry") < html.index("Invitation Reminder")
    assert html.index("Invitation Reminder") < html.index("Login Redirect")

    data = {"invitation_expiry_days": "14", "invitation_reminder_days": "3"}
    response = await post_form(gw, "/admin/settings", data)
    assert response.status == 303 and backend.reminder_days == 3
    html = await (await gw.get("/admin/settings")).text()
    assert '<option value="3" selected>3 days before expiry</option>' in html

    bad = await post_form(
        gw, "/admin/settings", {"invitation_expiry_days": "14", "invitation_reminder_days": "2"}
    )
    assert bad.status == 422
    html = await bad.text()
    assert "Choose Off, 1 day before expiry or 3 days before expiry." in html
    assert 'aria-invalid="true"' in html and backend.reminder_days == 3
    # An older form without the field leaves it as it is.
    await post_form(gw, "/admin/settings", {"invitation_expiry_days": "7"})
    assert backend.expiry_days == 7 and backend.reminder_days == 3


# --- the Invitations screen ------------------------------------------------------------------
async def test_invitations_screen_shows_client_requests_and_reminders(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    backend.add_invitation("asked@b.example", portal)
    backend.add_invitation("reminded@b.example", portal)
    backend.add_invitation("plain@b.example", portal)
    asked, reminded, plain = backend.invitations.values()
    asked["send_reason"] = "requested_by_invitee"
    reminded.update(send_reason="reminder", reminded_at="2026-11-29T08:00:00+00:00")
    html = await (await gw.get("/admin/invitations")).text()
    rows = {
        email: row
        for row in re.findall(r"<tr>(.*?)</tr>", html, re.S)
        for email in ("asked@b.example", "reminded@b.example", "plain@b.example")
        if email in row
    }
    assert "Sent again at the client's request" in rows["asked@b.example"]
    assert (
        'Reminder sent <time datetime="2026-11-29T08:00:00+00:00">2026-11-29 08:00 UTC</time>'
        in rows["reminded@b.example"]
    )
    assert "Sent again" not in rows["plain@b.example"]
    assert "Reminder sent" not in rows["plain@b.example"]
    assert plain["send_reason"] == "invited"
