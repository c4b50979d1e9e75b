"""Staff invitations on the real stack: a Client who already has an account logs in to
accept and becomes Staff; an Administrator invited as Staff keeps their role; the events
are invitation.staff.* (invitation.accepted, which portals grants from, never carries a
staff invitation), and no link travels in a public event."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from libs.common import broker
from tests.security.conftest import (
    CLIENT_PASSWORD,
    PublicEvents,
    Secrets,
    api,
    cookie,
    unique_email,
)
from tests.security.flows import (
    invite_link,
    logged_in,
    new_client,
    new_portal,
    post_form,
    publish_as,
    set_password,
    user_id_of,
)
from tests.security.test_broker_trust import dead_letter_ids, eventually, forged
from tests.support.smtp import accept_link
from tests.support.stack import ADMIN_EMAIL, Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def _staff_link(stack: Stack, admin: Browser, email: str, role: str, count: int = 1) -> str:
    status, body = await api(
        admin, "POST", "/api/v1/staff-invitations", {"email": email, "role": role}
    )
    assert status == 201, body
    messages = await stack.sink.wait_for(email, count)
    return accept_link(messages[-1])


async def _role(admin: Browser, email: str) -> str:
    status, page = await api(admin, "GET", f"/api/v1/users?q={email}")
    assert status == 200, page
    return str(next(u["role"] for u in page["items"] if u["email"] == email))


def _events(public_events: PublicEvents, email: str) -> list[tuple[str, dict[str, object]]]:
    found = []
    for key, body in public_events.bodies:
        envelope = orjson.loads(body)
        if envelope["data"].get("email") == email:
            found.append((key, envelope["data"]))
    return found


async def test_a_client_logs_in_to_accept_and_becomes_staff(
    stack: Stack, admin: Browser, public_events: PublicEvents, secrets_seen: Secrets
) -> None:
    client = await new_client(stack, admin)
    await client.browser.close()
    link = await _staff_link(stack, admin, client.email, "staff", count=2)
    secrets_seen.add(link.split("token=", 1)[1])
    subject = str((await stack.sink.wait_for(client.email, 2))[-1]["Subject"])
    assert subject.startswith(f"{ADMIN_EMAIL} has invited you to join ")
    assert subject.endswith(" as Staff")

    browser = Browser(stack.public_url)
    try:
        code, url, html = await browser.get(link)
        assert code == 200 and "log in to accept" in html, html[:500]
        code, url, html = await browser.submit(url, html, "Log In", {"Password": CLIENT_PASSWORD})
        assert code == 200 and url.endswith("/admin/portals"), (code, url, html[:500])
        assert "Invitation accepted: you are Staff now." in html
        # The new role holds on this very session: Invitations yes, Users no.
        assert (await browser.get("/admin/invitations"))[0] == 200
        assert (await browser.get("/admin/users"))[0] == 403
        # The link is spent.
        code, _, html = await browser.get(link)
        assert code == 409 and "already been used" in html
    finally:
        await browser.close()
    assert await _role(admin, client.email) == "staff"

    # The relay publishes after commit: wait (bounded) until the accept reached the bus.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if "invitation.staff.accepted" in [k for k, _ in _events(public_events, client.email)]:
            break
        await asyncio.sleep(0.1)
    types = [key for key, _ in _events(public_events, client.email)]
    assert "invitation.staff.created" in types and "invitation.staff.accepted" in types
    # invitation.accepted only for the portal invitation it accepted first, with its portal.
    accepted = [d for k, d in _events(public_events, client.email) if k == "invitation.accepted"]
    assert [d["portal_id"] for d in accepted] == [client.portal["id"]]


async def test_an_administrator_can_not_be_invited_down_to_staff(admin: Browser) -> None:
    status, body = await api(
        admin, "POST", "/api/v1/staff-invitations", {"email": ADMIN_EMAIL, "role": "staff"}
    )
    assert status == 409 and body["error"]["code"] == "already_on_team"
    assert body["error"]["message"] == (
        f"{ADMIN_EMAIL} already has an Administrator account; no invitation is needed."
    )
    status, body = await api(
        admin, "POST", "/api/v1/staff-invitations", {"email": unique_email(), "role": "owner"}
    )
    assert status == 422


async def test_a_client_logged_in_who_accepts_staff_gets_a_new_session(
    stack: Stack, admin: Browser
) -> None:
    """Raising a role renews the session (OWASP: a new id at any change of privilege): the
    Client's session, whose cookie may have been copied or planted, doesn't become a Staff
    one; the browser that accepted gets a new one and the old one ends."""
    client = await new_client(stack, admin)
    try:
        before = cookie(client.browser, "cp_session")
        assert before
        link = await _staff_link(stack, admin, client.email, "staff", count=2)
        code, url, html = await client.browser.get(link)
        assert code == 200, html[:500]
        code, url, html = await client.browser.submit(url, html, "Accept Invitation")
        assert code == 200 and url.endswith("/admin/portals"), (code, url, html[:500])
        assert "Invitation accepted: you are Staff now." in html
        after = cookie(client.browser, "cp_session")
        assert after and after != before
        assert (await client.browser.get("/admin/invitations"))[0] == 200
        assert not await logged_in(stack, before)  # the Client's session ended
    finally:
        await client.browser.close()
    assert await _role(admin, client.email) == "staff"


# --- an invitation never outlives its sender's right to send it ---------------------------
async def _new_administrator(stack: Stack, admin: Browser) -> tuple[Browser, str]:
    """Another Administrator, invited and accepted: logged in, and their user id."""
    email = unique_email("admin")
    link = await _staff_link(stack, admin, email, "administrator")
    browser, url = await set_password(stack, link)
    assert url.endswith("/admin/portals"), url
    return browser, await user_id_of(admin, email)


async def _sent_by(stack: Stack, sender: Browser, *, through_form: bool) -> tuple[str, str, str]:
    """``sender`` invites a stranger as Administrator (on the Users screen, or through the
    API with their session) and a client to a portal: the stranger's address, and the two
    links."""
    staff_email, client_email = unique_email("newadmin"), unique_email()
    if through_form:
        code, html = await post_form(
            sender, "/admin/users/invite", email=staff_email, role="administrator"
        )
        assert code == 200 and "Invitation sent" in html, html[:500]
    else:
        code, body = await api(
            sender,
            "POST",
            "/api/v1/staff-invitations",
            {"email": staff_email, "role": "administrator"},
        )
        assert code == 201, body
    staff_link = accept_link((await stack.sink.wait_for(staff_email))[-1])
    portal = await new_portal(sender)
    client_link = await invite_link(stack, sender, portal["id"], client_email)
    return staff_email, staff_link, client_link


async def _revoked_by_the_event(
    stack: Stack, public_events: PublicEvents, email: str, link: str
) -> None:
    """invitations applies identity's event and announces the revocation (nobody has
    touched the link, which would ask identity itself); then the link answers as any
    revoked invitation's does."""
    deadline = time.monotonic() + 20
    while "invitation.staff.revoked" not in [k for k, _ in _events(public_events, email)]:
        assert time.monotonic() < deadline, "no invitation.staff.revoked"
        await asyncio.sleep(0.1)
    browser = Browser(stack.public_url)
    try:
        code, _, html = await browser.get(link)
        assert code == 410 and "This invitation has been revoked" in html, (code, html[:300])
    finally:
        await browser.close()


async def _still_valid(stack: Stack, link: str) -> None:
    browser = Browser(stack.public_url)
    try:
        code, _, html = await browser.get(link)
        assert code == 200 and "Set Password" in html, (code, html[:300])
    finally:
        await browser.close()


async def _listed(admin: Browser) -> set[str]:
    status, body = await api(admin, "GET", "/api/v1/staff-invitations")
    assert status == 200, body
    return {i["email"] for i in body["items"]}


async def test_a_disabled_administrators_staff_invitations_are_revoked_their_clients_stay(
    stack: Stack, admin: Browser, public_events: PublicEvents
) -> None:
    """An Administrator's account is disabled (compromised, or they left): the staff
    invitations they sent can't make anyone Administrator any more. A client's invitation
    they sent stays valid: clients expect to survive staff turnover."""
    sender, sender_id = await _new_administrator(stack, admin)
    try:
        staff_email, staff_link, client_link = await _sent_by(stack, sender, through_form=True)
    finally:
        await sender.close()
    code, html = await post_form(admin, f"/admin/users/{sender_id}/disable")
    assert code == 200, html[:500]

    await _revoked_by_the_event(stack, public_events, staff_email, staff_link)
    await _still_valid(stack, client_link)
    # Off the Users screen's list, as after Revoke.
    assert staff_email not in await _listed(admin)


async def test_a_demoted_administrators_staff_invitations_are_revoked(
    stack: Stack, admin: Browser, public_events: PublicEvents
) -> None:
    sender, sender_id = await _new_administrator(stack, admin)
    try:
        staff_email, staff_link, client_link = await _sent_by(stack, sender, through_form=False)
    finally:
        await sender.close()
    code, html = await post_form(admin, f"/admin/users/{sender_id}/role", role="staff")
    assert code == 200, html[:500]

    await _revoked_by_the_event(stack, public_events, staff_email, staff_link)
    await _still_valid(stack, client_link)
    assert staff_email not in await _listed(admin)


async def test_a_forged_disable_of_the_sender_revokes_nothing(stack: Stack, admin: Browser) -> None:
    """identity.user.disabled from anyone but identity's broker user (here the broker's
    administrator, the most a stolen credential gives) is dead-lettered by invitations, and
    the invitation it names the sender of stays valid."""
    sender, sender_id = await _new_administrator(stack, admin)
    try:
        staff_email, staff_link, _ = await _sent_by(stack, sender, through_form=False)
    finally:
        await sender.close()
    event = forged("identity.user.disabled", {"user_id": sender_id})
    await publish_as(
        stack.broker.amqp_url,
        stack,
        "events",
        event,
        user_id=broker.user_of(stack.broker.amqp_url),
    )

    async def dead() -> bool:
        return event["id"] in await dead_letter_ids(stack, "invitations")

    await eventually(dead, "the forged disable in invitations' dead-letter queue")
    await _still_valid(stack, staff_link)
    assert staff_email in await _listed(admin)
