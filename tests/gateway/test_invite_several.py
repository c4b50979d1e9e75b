"""Several portals, one invitation, through the gateway (against fakes): the API route
POST /api/v1/invitations, All Portals' ticks → Invite Client → Send Invitation, and the
accept saga granting every portal a group's link takes."""

from __future__ import annotations

import uuid

from aiohttp.test_utils import TestClient

from services.gateway.security import API_SCOPES
from tests.gateway.conftest import csrf, log_in, post_form
from tests.gateway.fakes import Backend, Json

PASSWORD = "correct horse battery"


async def as_team(gw: TestClient, backend: Backend, role: str = "administrator") -> Json:
    user = backend.add_user(f"{role}@example.com", PASSWORD, role=role)
    await log_in(gw, user, PASSWORD)
    return user


async def test_api_invites_to_several_portals(gw: TestClient, backend: Backend) -> None:
    await as_team(gw, backend)
    acme, beta = backend.add_portal("Acme"), backend.add_portal("Beta")
    response = await gw.post(
        "/api/v1/invitations",
        json={
            "email": "Ann@Example.COM",
            "portal_ids": [acme["id"], beta["id"]],
            "expires_in_days": 30,
            "personal_message": "Both projects.",
            "name": "Ann",
        },
        headers={"X-CSRF-Token": await csrf(gw), "Idempotency-Key": "crm-42"},
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    assert [i["portal_id"] for i in body["invitations"]] == [acme["id"], beta["id"]]
    assert {i["group_id"] for i in body["invitations"]} == {body["group_id"]}
    [sent] = backend.group_bodies
    assert sent == {
        "email": "Ann@example.com",
        "portal_ids": [acme["id"], beta["id"]],
        "invited_by": "administrator@example.com",
        "expires_in_days": 30,
        "personal_message": "Both projects.",
        "name": "Ann",
        "idempotency_key": "crm-42",
    }


async def test_api_refuses_bad_lists_clearly(gw: TestClient, backend: Backend) -> None:
    await as_team(gw, backend)
    headers = {"X-CSRF-Token": await csrf(gw)}
    archived = backend.add_portal("Old Site", status="archived")
    for portal_ids, status, code in (
        ([], 422, "invalid_input"),
        ([str(uuid.uuid4()) for _ in range(21)], 422, "invalid_input"),
        ([archived["id"]], 409, "portal_not_active"),
        ([str(uuid.uuid4())], 404, "portal_not_found"),
    ):
        response = await gw.post(
            "/api/v1/invitations",
            json={"email": "ann@example.com", "portal_ids": portal_ids},
            headers=headers,
        )
        body = await response.json()
        assert (response.status, body["error"]["code"]) == (status, code), body
    assert (
        "'Old Site'"
        in (
            await (
                await gw.post(
                    "/api/v1/invitations",
                    json={"email": "ann@example.com", "portal_ids": [archived["id"]]},
                    headers=headers,
                )
            ).json()
        )["error"]["message"]
    )


async def test_the_route_needs_invitations_write_and_staff_may_use_it(
    gw: TestClient, backend: Backend
) -> None:
    assert API_SCOPES[("POST", "/api/v1/invitations")] == "invitations:write"
    await as_team(gw, backend, role="staff")
    portal = backend.add_portal("Acme")
    response = await gw.post(
        "/api/v1/invitations",
        json={"email": "bo@example.com", "portal_ids": [portal["id"]]},
        headers={"X-CSRF-Token": await csrf(gw)},
    )
    assert response.status == 201
    assert backend.group_bodies[-1]["invited_by"] == "staff@example.com"


async def test_all_portals_tick_then_invite_client(gw: TestClient, backend: Backend) -> None:
    await as_team(gw, backend, role="staff")
    acme, beta = backend.add_portal("Acme"), backend.add_portal("Beta")
    pending = backend.add_portal("Draft", status="pending")
    html = await (await gw.get("/admin/portals")).text()
    assert f'<label for="tick-{acme["id"]}" class="visually-hidden">Select Acme</label>' in html
    assert f'id="tick-{pending["id"]}"' not in html  # only Active portals take invitations
    assert '<button type="submit" class="small">Invite Client</button>' in html

    # Nothing ticked: back to the list, saying what to do.
    response = await gw.get("/admin/portals/invite", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/admin/portals"
    listed = await (await gw.get("/admin/portals")).text()
    assert "Tick at least one portal first, then Invite Client." in listed

    backend.expiry_days = 21
    query = f"portal_id={acme['id']}&portal_id={beta['id']}"
    page = await (await gw.get(f"/admin/portals/invite?{query}")).text()
    assert "<strong>Acme</strong>" in page and "<strong>Beta</strong>" in page
    for label in ("Email", "Name", "Link Expiry", "Personal Message"):
        assert f">{label}</label>" in page
    assert '<option value="21" selected>21 days</option>' in page  # the setting
    assert ">Send Invitation</button>" in page

    form = {
        "portal_id": acme["id"],
        "email": "cy@example.com",
        "name": "Cy",
        "expires_in_days": "7",
        "personal_message": "See you there.",
    }
    response = await gw.post(
        "/admin/portals/invite",
        data=[*form.items(), ("portal_id", beta["id"]), ("csrf_token", await csrf(gw))],
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/admin/portals"
    assert backend.group_bodies[-1] == {
        "email": "cy@example.com",
        "portal_ids": [acme["id"], beta["id"]],
        "invited_by": "staff@example.com",
        "expires_in_days": 7,
        "personal_message": "See you there.",
        "name": "Cy",
    }
    listed = await (await gw.get("/admin/portals")).text()
    assert "Invitation sent to cy@example.com: one email for the portals you ticked." in listed


async def test_the_box_says_what_is_wrong(gw: TestClient, backend: Backend) -> None:
    await as_team(gw, backend)
    acme = backend.add_portal("Acme")
    archived = backend.add_portal("Old Site", status="archived")
    response = await post_form(
        gw, "/admin/portals/invite", {"portal_id": acme["id"], "email": "not an address"}
    )
    assert response.status == 422
    html = await response.text()
    assert "Enter an email address like name@example.com." in html
    assert 'aria-describedby="invite_email-error"' in html
    page = await (await gw.get(f"/admin/portals/invite?portal_id={archived['id']}")).text()
    assert "untick &#39;Old Site&#39; (Archived)" in page
    response = await post_form(
        gw, "/admin/portals/invite", {"portal_id": archived["id"], "email": "ann@example.com"}
    )
    assert response.status == 422
    assert backend.group_bodies == []


async def test_accepting_a_groups_link_grants_each_portal(gw: TestClient, backend: Backend) -> None:
    acme, beta = backend.add_portal("Acme"), backend.add_portal("Beta")
    token = backend.add_group("dee@example.com", [acme, beta])
    page = await (await gw.get(f"/invitations/accept?token={token}")).text()
    assert "You have been invited to these portals" in page
    assert "<strong>Acme</strong>" in page and "<strong>Beta</strong>" in page
    data = {"token": token, "password": "a long new password", "confirm": "a long new password"}
    response = await post_form(gw, "/invitations/accept", data)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/client-portal/"  # several: the list of them
    user = backend.by_email("dee@example.com")
    assert user is not None
    assert acme["client_id"] == user["id"] and beta["client_id"] == user["id"]
    assert backend.calls.count("portals.grant") == 2
    group_id = next(iter(backend.invitations.values()))["group_id"]
    assert backend.ensured[group_id] == user["id"]  # one account per group, every try


async def test_selected_rows_of_one_group_resend_in_one_email(
    gw: TestClient, backend: Backend
) -> None:
    await as_team(gw, backend)
    acme, beta, gamma = (backend.add_portal(t) for t in ("Acme", "Beta", "Gamma"))
    backend.add_group("eve@example.com", [acme, beta])
    backend.add_invitation("fay@example.com", gamma)
    ids = list(backend.invitations)
    response = await gw.post(
        "/admin/invitations/bulk",
        data=[
            ("action", "resend"),
            *(("ids", i) for i in ids),
            ("csrf_token", await csrf(gw)),
        ],
        allow_redirects=False,
    )
    assert response.status == 303
    # One Resend for the group (its link, for both), one for the other invitation.
    assert backend.calls.count("invitations.resend:staff") == 2
    listed = await (await gw.get("/admin/invitations")).text()
    assert "3 resent" in listed
