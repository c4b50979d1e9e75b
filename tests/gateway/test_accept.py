"""The accept saga through the gateway (docs/internal-api.md), against fakes."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from tests.gateway.conftest import csrf, log_in, post_form
from tests.gateway.fakes import COMMON_PASSWORD, Backend

PASSWORD = "a long new password"


async def test_get_shows_the_form_and_never_consumes(gw: TestClient, backend: Backend) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("new@example.com", portal)
    for _ in range(2):
        response = await gw.get(f"/invitations/accept?token={token}")
        assert response.status == 200
    html = await response.text()
    assert "Acme Launch" in html and "new@example.com" in html
    assert "<strong>localhost</strong>" in html
    assert "at least 12 characters" in html and "not be your email address" in html
    assert '<label for="password">Password</label>' in html
    assert '<label for="confirm">Confirm Password</label>' in html
    assert ">Set Password</button>" in html
    assert f'name="token" value="{token}"' in html
    assert "invitations.accept" not in backend.calls
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_happy_path_creates_logs_in_and_lands_on_portal(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("new@example.com", portal)
    await gw.get(f"/invitations/accept?token={token}")
    data = {"token": token, "password": PASSWORD, "confirm": PASSWORD}
    before = len(backend.calls)
    response = await post_form(gw, "/invitations/accept", data)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/client-portal/acme-launch/"
    # The link is checked once per post, not once more inside the saga.
    assert backend.calls[before:].count("invitations.validate") == 1
    assert response.cookies["cp_session"]["httponly"]
    user = backend.by_email("new@example.com")
    assert user is not None and user["role"] == "client"
    assert portal["client_id"] == user["id"]
    # A new account already has this request's password: no second argon2 round.
    # The link is spent before anything is made; access comes after the acceptance.
    assert backend.calls[-6:] == [
        "invitations.validate",
        "invitations.reserve",
        "identity.ensure",
        "invitations.accept",
        "portals.grant",
        "identity.issue",
    ]
    page = await gw.get("/client-portal/acme-launch/")
    assert "<strong>Acme Launch</strong>" in await page.text()


async def test_mismatched_or_short_passwords_stay_on_the_form(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("new@example.com", portal)
    bad = {"token": token, "password": PASSWORD, "confirm": PASSWORD + "x"}
    response = await post_form(gw, "/invitations/accept", bad)
    assert response.status == 422
    html = await response.text()
    assert "The passwords do not match." in html
    assert 'aria-describedby="confirm-error"' in html and 'role="alert"' in html
    short = {"token": token, "password": "short", "confirm": "short"}
    response = await post_form(gw, "/invitations/accept", short)
    assert "at least 12 characters long." in await response.text()
    assert "identity.ensure" not in backend.calls


async def test_a_retry_after_a_failed_try_sets_the_password_typed_this_time(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("retry@example.com", portal)
    invitation_id = next(
        i["id"] for i in backend.invitations.values() if i["email"] == "retry@example.com"
    )
    # The earlier try created the account (with its password) and then failed.
    earlier = backend.add_user("retry@example.com", "the first password typed")
    backend.ensured[invitation_id] = earlier["id"]
    await gw.get(f"/invitations/accept?token={token}")
    data = {"token": token, "password": PASSWORD, "confirm": PASSWORD}
    response = await post_form(gw, "/invitations/accept", data)
    assert response.status == 303
    assert backend.calls[-7:] == [
        "invitations.validate",
        "invitations.reserve",
        "identity.ensure",
        "invitations.accept",
        "identity.password",
        "portals.grant",
        "identity.issue",
    ]
    assert backend.passwords[earlier["id"]] == PASSWORD


async def test_a_refused_password_gives_the_link_back(gw: TestClient, backend: Backend) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("new@example.com", portal)
    # The gateway's checks pass it; identity, which has the last word, refuses it.
    data = {"token": token, "password": COMMON_PASSWORD, "confirm": COMMON_PASSWORD}
    response = await post_form(gw, "/invitations/accept", data)
    assert response.status == 422
    assert "too common" in await response.text()
    inv = next(iter(backend.invitations.values()))
    assert backend.calls[-2:] == ["identity.ensure", "invitations.release"]
    assert inv["status"] == "pending" and inv.get("claim") is None


async def test_used_link_says_so_with_a_login_link(gw: TestClient, backend: Backend) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("new@example.com", portal, status="accepted")
    response = await gw.get(f"/invitations/accept?token={token}")
    assert response.status == 409
    html = await response.text()
    assert "This invitation has already been used" in html
    assert 'href="/login?next=/client-portal/"' in html


async def test_expired_link_shows_no_account_info(gw: TestClient, backend: Backend) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("new@example.com", portal, status="expired")
    response = await gw.get(f"/invitations/accept?token={token}")
    assert response.status == 410
    html = await response.text()
    assert "This invitation has expired" in html
    assert "Ask the person who invited you to resend it, or ask for a new link here." in html
    assert "new@example.com" not in html and "Acme Launch" not in html


async def test_revoked_and_invalid_links(gw: TestClient, backend: Backend) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("new@example.com", portal, status="revoked")
    response = await gw.get(f"/invitations/accept?token={token}")
    assert "This invitation has been revoked" in await response.text()
    response = await gw.get("/invitations/accept?token=nonsense")
    assert response.status == 404
    assert "This invitation link is not valid" in await response.text()


async def test_concurrent_accepts_have_one_winner(gw: TestClient, backend: Backend) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("new@example.com", portal)
    data = {"csrf_token": await csrf(gw), "token": token, "password": PASSWORD, "confirm": PASSWORD}
    responses = await asyncio.gather(
        *(gw.post("/invitations/accept", data=data, allow_redirects=False) for _ in range(16))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(303) == 1
    assert all(s == 409 for s in statuses if s != 303)
    assert len([u for u in backend.users.values() if u["email"] == "new@example.com"]) == 1


async def test_existing_account_logs_in_to_accept(gw: TestClient, backend: Backend) -> None:
    existing = backend.add_user("old@example.com", "the old password")
    portal = backend.add_portal("Second Project")
    token = backend.add_invitation("old@example.com", portal)
    response = await gw.get(f"/invitations/accept?token={token}")
    html = await response.text()
    assert "You already have an account — log in to accept" in html
    assert 'value="old@example.com" readonly' in html
    wrong = await post_form(
        gw, "/invitations/accept/login", {"token": token, "password": "not the password"}
    )
    assert wrong.status == 401
    assert "The email or password is incorrect." in await wrong.text()
    response = await post_form(
        gw,
        "/invitations/accept/login",
        {"token": token, "password": "the old password", "email": "attacker@example.com"},
    )
    assert response.status == 303
    assert response.headers["Location"] == "/client-portal/second-project/"
    assert portal["client_id"] == existing["id"]
    assert backend.passwords[existing["id"]] == "the old password"
    assert "identity.password" not in backend.calls


async def test_logged_in_as_invited_email_accepts_directly(
    gw: TestClient, backend: Backend
) -> None:
    existing = backend.add_user("old@example.com", "the old password")
    portal = backend.add_portal("Second Project")
    token = backend.add_invitation("old@example.com", portal)
    await log_in(gw, existing, "the old password")
    page = await gw.get(f"/invitations/accept?token={token}")
    assert ">Accept Invitation</button>" in await page.text()
    response = await post_form(gw, "/invitations/accept", {"token": token})
    assert response.status == 303
    assert response.headers["Location"] == "/client-portal/second-project/"
    assert portal["client_id"] == existing["id"]


async def test_an_account_disabled_during_the_accept_says_so_and_logs_no_one_in(
    gw: TestClient, backend: Backend
) -> None:
    """The administrator disables the new account between the account step and the grant:
    portals refuses the grant (user_disabled), and the page says the account is disabled
    (as the link does once it is), with no session."""
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("late@example.com", portal)
    await gw.get(f"/invitations/accept?token={token}")

    def disabled_meanwhile(body: dict[str, object]) -> None:
        backend.users[str(body["user_id"])]["disabled"] = True

    backend.before_grant = disabled_meanwhile
    data = {"token": token, "password": PASSWORD, "confirm": PASSWORD}
    response = await post_form(gw, "/invitations/accept", data)
    html = await response.text()
    assert response.status == 403, html[:1000]
    assert "Your account is disabled" in html
    assert "cp_session" not in response.cookies
    assert "identity.issue" not in backend.calls
    assert portal["client_id"] is None


async def test_each_grant_names_when_the_link_was_accepted(
    gw: TestClient, backend: Backend
) -> None:
    """The saga's grants carry the acceptance time invitations answered, so portals can
    refuse one accepted before the account's latest Enable (a slow or retried step across a
    Disable and an Enable), as it does the acceptance's event: a group's link, a new account,
    and an account logged in."""
    first, second = backend.add_portal("Acme Launch"), backend.add_portal("Acme Rebrand")
    token = backend.add_group("new@example.com", [first, second])
    data = {"token": token, "password": PASSWORD, "confirm": PASSWORD}
    response = await post_form(gw, "/invitations/accept", data)
    assert response.status == 303, await response.text()
    existing = backend.add_user("old@example.com", "the old password")
    third = backend.add_portal("Second Project")
    one = backend.add_invitation("old@example.com", third)
    await log_in(gw, existing, "the old password")
    response = await post_form(gw, "/invitations/accept", {"token": one})
    assert response.status == 303, await response.text()
    accepted = [inv["accepted_at"] for inv in backend.invitations.values()]
    assert len(backend.grant_bodies) == 3 and all(accepted)
    sent = [(body["grant_key"], body.get("accepted_at")) for body in backend.grant_bodies]
    assert sent == [(key, backend.invitations[key]["accepted_at"]) for key, _ in sent]
