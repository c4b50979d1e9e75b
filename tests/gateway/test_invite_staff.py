"""Users → Invite Staff in front of fakes of the internal APIs: the form (CSRF, messages
for a bad email, an unknown role, someone already on the team), the list of pending staff
invitations with Resend / Revoke, and the accept saga of a staff invitation (a new
account with the role lands in the admin area; an existing one logs in, is raised to the
role, and an Administrator invited as Staff keeps their role, and is told so)."""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from services.gateway.domain import flash_text
from tests.gateway.conftest import log_in, make_settings, post_form
from tests.gateway.fakes import Backend, Json

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a-long-new-password-1"


async def as_admin(gw: TestClient, backend: Backend) -> Json:
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)
    return admin


def flash(response: object) -> str:
    """The message the next page shows (the cookie holds its key and argument)."""
    cookie = response.cookies.get("cp_flash")  # type: ignore[attr-defined]
    if cookie is None:
        return ""
    key, _, argument = unquote(cookie.value).partition("|")
    return flash_text(key, argument) or ""


async def test_the_users_screen_has_the_invite_staff_form(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    html = await (await gw.get("/admin/users")).text()
    assert '<h2 id="invite-staff-heading">Invite Staff</h2>' in html
    assert '<label for="staff_email">Email</label>' in html
    assert '<label for="staff_role">Role</label>' in html
    assert '<option value="staff" selected>Staff</option>' in html
    assert '<option value="administrator">Administrator</option>' in html
    assert '<option value="client"' not in html.split("invite-staff-heading")[1].split("</form>")[0]
    assert ">Send Invitation</button>" in html


async def test_send_invitation_invites_with_the_role_and_says_so(
    gw: TestClient, backend: Backend
) -> None:
    admin = await as_admin(gw, backend)
    response = await post_form(
        gw, "/admin/users/invite", {"email": " Sam@Agency.Example ", "role": "staff"}
    )
    assert response.status == 303 and response.headers["Location"] == "/admin/users"
    assert "invitations.invite_staff:staff:admin@example.com" in backend.calls
    # The sender by id: their losing the right to invite staff revokes it (SECURITY.md).
    assert backend.staff_invite_bodies[-1]["invited_by_id"] == admin["id"]
    html = await (await gw.get("/admin/users")).text()
    assert "Invitation sent to Sam@agency.example" in html
    # The pending staff invitation is listed with its role, status and actions.
    table = html.split('aria-label="Staff invitations"')[1].split("</table>")[0]
    assert "Sam@agency.example" in table and "<td>Staff</td>" in table and "Pending" in table
    assert 'aria-label="Resend to Sam@agency.example">Resend</button>' in table
    assert 'aria-label="Revoke invitation to Sam@agency.example">Revoke</button>' in table
    # Inviting again resends it, with the role given now.
    again = await post_form(
        gw, "/admin/users/invite", {"email": "Sam@agency.example", "role": "administrator"}
    )
    assert "already pending for Sam@agency.example" in flash(again)


async def test_the_form_needs_its_csrf_token(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    response = await gw.post(
        "/admin/users/invite",
        data={"email": "sam@agency.example", "role": "staff"},
        allow_redirects=False,
    )
    assert response.status == 403
    assert not any(c.startswith("invitations.invite_staff") for c in backend.calls)


async def test_bad_input_is_answered_beside_its_field(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    response = await post_form(
        gw, "/admin/users/invite", {"email": "not an email", "role": "owner"}
    )
    assert response.status == 422
    html = await response.text()
    assert 'id="staff_email-error" role="alert">Enter a single valid email address' in html
    assert 'id="staff_role-error" role="alert">Choose a role: Administrator or Staff.' in html
    assert 'value="not an email"' in html  # the form keeps what was typed
    for role in ("client", ""):
        response = await post_form(
            gw, "/admin/users/invite", {"email": "sam@agency.example", "role": role}
        )
        assert response.status == 422
        assert "Choose a role: Administrator or Staff." in await response.text()
    assert not any(c.startswith("invitations.invite_staff") for c in backend.calls)


async def test_someone_already_on_the_team_gets_a_clear_message(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    backend.add_user("kim@agency.example", PASSWORD, role="staff")
    response = await post_form(
        gw, "/admin/users/invite", {"email": "kim@agency.example", "role": "staff"}
    )
    assert response.status == 409
    html = await response.text()
    assert (
        'id="staff_email-error" role="alert">kim@agency.example already has a Staff account;'
        " no invitation is needed." in html
    )
    # A Client is invited like anyone else: nothing says they have an account.
    backend.add_user("client@example.com", PASSWORD)
    response = await post_form(
        gw, "/admin/users/invite", {"email": "client@example.com", "role": "staff"}
    )
    assert response.status == 303
    assert flash(response).endswith("client@example.com")
    assert "Invitation sent" in (await (await gw.get("/admin/users")).text())


async def test_resend_and_revoke_from_the_users_screen(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    token = backend.add_staff_invitation("sam@agency.example", "staff")
    inv_id = backend.tokens[token]
    response = await post_form(gw, f"/admin/users/invitations/{inv_id}/resend")
    assert response.status == 303 and "Invitation resent to sam@agency.example" in flash(response)
    response = await post_form(gw, f"/admin/users/invitations/{inv_id}/revoke")
    assert response.status == 303 and "Invitation to sam@agency.example revoked." in flash(response)
    assert backend.invitations[inv_id]["status"] == "revoked"
    html = await (await gw.get("/admin/users")).text()
    assert 'aria-label="Staff invitations"' not in html  # nothing open any more


async def test_staff_can_not_invite_staff(gw: TestClient, backend: Backend) -> None:
    staff = backend.add_user("kim@agency.example", PASSWORD, role="staff")
    await log_in(gw, staff, PASSWORD)
    response = await post_form(
        gw, "/admin/users/invite", {"email": "sam@agency.example", "role": "administrator"}
    )
    assert response.status == 403
    assert not any(c.startswith("invitations.invite_staff") for c in backend.calls)


async def test_a_new_person_sets_a_password_and_lands_in_the_admin_area(
    gw: TestClient, backend: Backend
) -> None:
    token = backend.add_staff_invitation("sam@agency.example", "staff")
    html = await (await gw.get(f"/invitations/accept?token={token}")).text()
    assert "as <strong>Staff</strong>" in html and ">Set Password</button>" in html
    response = await post_form(
        gw,
        "/invitations/accept",
        {"token": token, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert response.status == 303 and response.headers["Location"] == "/admin/portals"
    assert "Invitation accepted: you are Staff now." in flash(response)
    user = backend.by_email("sam@agency.example")
    assert user is not None and user["role"] == "staff"
    assert backend.invitations[backend.tokens[token]]["status"] == "accepted"
    assert not any(c.startswith("portals.") for c in backend.calls)  # no portal to grant
    page = await gw.get("/admin/portals", allow_redirects=False)
    assert page.status == 200  # logged in, in the admin area


async def test_an_existing_client_logs_in_to_accept_and_becomes_staff(
    gw: TestClient, backend: Backend
) -> None:
    client = backend.add_user("sam@agency.example", PASSWORD)
    token = backend.add_staff_invitation("sam@agency.example", "administrator")
    html = await (await gw.get(f"/invitations/accept?token={token}")).text()
    assert "log in to accept" in html and "as <strong>Administrator</strong>" in html
    response = await post_form(
        gw, "/invitations/accept/login", {"token": token, "password": PASSWORD}
    )
    assert response.status == 303 and response.headers["Location"] == "/admin/portals"
    assert "you are Administrator now" in flash(response)
    assert client["role"] == "administrator"
    assert (await gw.get("/admin/users", allow_redirects=False)).status == 200


async def test_an_administrator_invited_as_staff_keeps_the_role_and_is_told(
    gw: TestClient, backend: Backend
) -> None:
    admin = await as_admin(gw, backend)
    token = backend.add_staff_invitation(admin["email"], "staff")
    html = await (await gw.get(f"/invitations/accept?token={token}")).text()
    assert "You are already an Administrator: accepting keeps that role." in html
    response = await post_form(gw, "/invitations/accept", {"token": token})
    assert response.status == 303 and response.headers["Location"] == "/admin/portals"
    assert "You are already an Administrator, and you keep that role." in flash(response)
    assert admin["role"] == "administrator"
    assert not any(c.startswith("identity.role") for c in backend.calls)


async def test_the_api_invites_staff_for_administrators_only(backend: Backend) -> None:
    app = create_app(make_settings(backend, gateway_api_key="k" * 40))
    async with TestClient(TestServer(app)) as api:
        headers = {"Authorization": "Bearer " + "k" * 40}
        body = {"email": "sam@agency.example", "role": "administrator"}
        response = await api.post("/api/v1/staff-invitations", json=body, headers=headers)
        assert response.status == 201
        made = await response.json()
        assert made["outcome"] == "created"
        invitation = made["invitation"]
        assert invitation["role"] == "administrator" and invitation["status"] == "pending"
        assert "portal_id" not in invitation and invitation["invited_by"] == "api"
        again = await api.post("/api/v1/staff-invitations", json=body, headers=headers)
        assert again.status == 200 and (await again.json())["outcome"] == "resent"
        listed = await (await api.get("/api/v1/staff-invitations", headers=headers)).json()
        assert [i["email"] for i in listed["items"]] == ["sam@agency.example"]
        bad = await api.post(
            "/api/v1/staff-invitations",
            json={"email": "x", "role": "client"},
            headers=headers,
        )
        assert bad.status == 422
        assert (await bad.json())["error"]["code"]
        assert backend.calls.count("invitations.invite_staff:administrator:api") == 2
        # The bootstrap key is no person: no sender's right for the invitation to live by.
        assert "invited_by_id" not in backend.staff_invite_bodies[-1]
        # No session, no key: refused, and nothing is sent.
        assert (await api.post("/api/v1/staff-invitations", json=body)).status in (401, 403)
        assert backend.calls.count("invitations.invite_staff:administrator:api") == 2
