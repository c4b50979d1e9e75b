"""Issue 20 at the gateway: Link Expiry and Personal Message (the Invite Client box and
/api/v1), several Sub-Clients in one Save Portal, and the Invitations screen's search,
status tabs and Resend / Revoke for the selected rows."""

from __future__ import annotations

import html
import re

from aiohttp.test_utils import TestClient

from services.gateway.domain import bulk_text
from tests.gateway.conftest import csrf, log_in, post_form
from tests.gateway.fakes import Backend, Json

PASSWORD = "correct horse battery"


async def as_admin(gw: TestClient, backend: Backend) -> Json:
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)
    return admin


def invitation_to(backend: Backend, email: str) -> Json:
    return next(i for i in backend.invitations.values() if i["email"] == email)


async def flash_of(gw: TestClient, response: object) -> str:
    location = response.headers["Location"]  # type: ignore[attr-defined]
    page = await (await gw.get(location)).text()
    match = re.search(r'<p class="flash" role="status">(.*?)</p>', page, re.S)
    assert match, page
    return html.unescape(match.group(1))


# --- Link Expiry and Personal Message ----------------------------------------------------
async def test_invite_box_offers_link_expiry_from_the_setting(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    backend.expiry_days = 21
    portal = backend.add_portal("Acme")
    editor = await (await gw.get(f"/admin/portals/{portal['id']}")).text()
    assert '<label for="invite_expiry">Link Expiry</label>' in editor
    assert '<option value="21" selected>21 days</option>' in editor
    assert re.findall(r"<option value=\"(\d+)\"[^>]*>\d+ days", editor) == [
        "7", "14", "21", "30",
    ]  # fmt: skip
    assert '<label for="invite_message">Personal Message</label>' in editor
    assert 'name="personal_message"' in editor


async def test_invite_box_sends_the_chosen_expiry_and_message(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    path = f"/admin/portals/{portal['id']}/invite"
    note = "Hi Ann,\r\nhere is <b>your</b> portal."
    data = {"email": "ann@example.com", "expires_in_days": "30", "personal_message": note}
    response = await post_form(gw, path, data)
    assert response.status == 303
    sent = invitation_to(backend, "ann@example.com")
    assert sent["expires_in_days"] == 30
    assert sent["personal_message"] == "Hi Ann,\nhere is <b>your</b> portal."

    # An empty message is none; the form's expiry left out: the setting decides.
    await post_form(gw, path, {"email": "bob@example.com", "personal_message": "  "})
    sent = invitation_to(backend, "bob@example.com")
    assert sent["expires_in_days"] == 14 and sent["personal_message"] is None


async def test_invite_box_refuses_bad_expiry_and_long_message_keeping_the_input(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    path = f"/admin/portals/{portal['id']}/invite"
    data = {"email": "ann@example.com", "expires_in_days": "10", "personal_message": "Hello"}
    bad = await post_form(gw, path, data)
    assert bad.status == 422
    page = await bad.text()
    assert "Choose 7, 14, 21 or 30 days." in page and 'id="invite_expiry-error"' in page
    assert ">Hello</textarea>" in page and 'value="ann@example.com"' in page

    data = {"email": "ann@example.com", "expires_in_days": "7", "personal_message": "y" * 1001}
    bad = await post_form(gw, path, data)
    assert bad.status == 422
    page = await bad.text()
    assert "The Personal Message must be at most 1,000 characters. It has 1,001" in page
    assert 'id="invite_message-error"' in page and '<option value="7" selected>' in page
    assert not backend.invitations


async def test_api_invite_takes_expiry_and_message_and_explains_bad_ones(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    headers = {"X-CSRF-Token": await csrf(gw)}
    portal = backend.add_portal("Acme")
    path = f"/api/v1/portals/{portal['id']}/invitations"
    body = {"email": "ann@example.com", "expires_in_days": 7, "personal_message": "Welcome!"}
    response = await gw.post(path, json=body, headers=headers)
    assert response.status == 201
    made = (await response.json())["invitation"]
    assert made["expires_in_days"] == 7 and made["personal_message"] == "Welcome!"

    for bad, words in (
        ({"expires_in_days": 10}, "Link Expiry must be 7, 14, 21 or 30 days."),
        ({"expires_in_days": "soon"}, "expires_in_days"),
        ({"personal_message": "z" * 1001}, "at most 1,000 characters"),
    ):
        response = await gw.post(path, json={"email": "bob@example.com", **bad}, headers=headers)
        assert response.status == 422, bad
        error = (await response.json())["error"]
        assert words in error["message"], error
    assert len(backend.invitations) == 1


async def test_api_lists_invitations_of_one_address(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    backend.add_invitation("ann@example.com", portal)
    backend.add_invitation("bob@example.com", portal)
    response = await gw.get("/api/v1/invitations", params={"email": " Ann@EXAMPLE.com "})
    assert response.status == 200
    assert [i["email"] for i in (await response.json())["items"]] == ["ann@example.com"]
    response = await gw.get("/api/v1/invitations", params={"email": "ann"})
    assert response.status == 422
    assert "email" in (await response.json())["error"]["message"]


# --- Sub-Clients ----------------------------------------------------------------------
async def test_one_save_portal_adds_every_chosen_sub_client(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    ann, bob, cid = (backend.add_user(f"{n}@example.com", PASSWORD) for n in ("ann", "bob", "cid"))
    editor = await (await gw.get(f"/admin/portals/{portal['id']}")).text()
    assert re.search(r'<select id="add_sub_client" name="add_sub_client"[^>]* multiple', editor)
    form = [
        ("csrf_token", await csrf(gw)),
        ("title", "Acme"),
        ("status", "active"),
        ("add_sub_client", ann["id"]),
        ("add_sub_client", bob["id"]),
    ]
    response = await gw.post(f"/admin/portals/{portal['id']}", data=form, allow_redirects=False)
    assert response.status == 303
    assert portal["sub_client_ids"] == [ann["id"], bob["id"]]
    # The next Save adds to them, and an unknown user among the chosen adds no one.
    form[-2:] = [("add_sub_client", cid["id"]), ("add_sub_client", "not-a-user")]
    response = await gw.post(f"/admin/portals/{portal['id']}", data=form, allow_redirects=False)
    assert response.status == 422 and "Choose existing users." in await response.text()
    assert portal["sub_client_ids"] == [ann["id"], bob["id"]]
    form[-1:] = []
    await gw.post(f"/admin/portals/{portal['id']}", data=form, allow_redirects=False)
    assert portal["sub_client_ids"] == [ann["id"], bob["id"], cid["id"]]


# --- the Invitations screen -------------------------------------------------------------
async def test_status_tabs_with_counts_and_search_by_email(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    for email, status in (
        ("ann@example.com", "pending"),
        ("ann@example.com", "revoked"),
        ("bob@example.com", "pending"),
        ("cid@example.com", "accepted"),
    ):
        backend.add_invitation(email, portal, status=status)
    page = await (await gw.get("/admin/invitations")).text()
    tabs = re.findall(r'<a href="([^"]+)"( aria-current="page")?>(\w+) <span class="count">'
                      r"\((\d+)\)</span></a>", page)  # fmt: skip
    assert [(label, int(n), bool(current)) for _, current, label, n in tabs] == [
        ("All", 4, False),
        ("Pending", 2, True),
        ("Accepted", 1, False),
        ("Expired", 0, False),
        ("Revoked", 1, False),
    ]
    assert '<label for="search-email">Search by email</label>' in page

    page = await (
        await gw.get("/admin/invitations", params={"status": "all", "email": "ANN@example.com"})
    ).text()
    assert page.count("<td>ann@example.com</td>") == 2 and "bob@example.com" not in page
    assert 'href="/admin/invitations?status=revoked&amp;email=ANN%40example.com"' in page
    assert 'All <span class="count">(2)</span>' in page
    assert 'Revoked <span class="count">(1)</span>' in page

    response = await gw.get("/admin/invitations", params={"email": "ann"})
    assert response.status == 200
    page = await response.text()
    assert "Enter a whole email address, like name@example.com." in page
    assert "No invitations match." in page


async def test_an_empty_tab_says_what_it_lacks_not_that_a_search_found_nothing(
    gw: TestClient, backend: Backend
) -> None:
    """With nothing searched, an empty tab said "No invitations match." (a new install's
    first look at the screen): it says which invitations there are none of; a search or
    a portal chosen still says none match."""
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    expected = {
        "all": "No invitations yet.",
        "pending": "No pending invitations.",
        "accepted": "No accepted invitations.",
        "expired": "No expired invitations.",
        "revoked": "No revoked invitations.",
    }
    for status, words in expected.items():
        page = await (await gw.get("/admin/invitations", params={"status": status})).text()
        assert words in page and "No invitations match." not in page, status
    backend.add_invitation("ann@example.com", portal, status="revoked")
    page = await (await gw.get("/admin/invitations", params={"status": "pending"})).text()
    assert "No pending invitations." in page
    for search in ({"email": "bob@example.com"}, {"portal_id": portal["id"]}):
        page = await (
            await gw.get("/admin/invitations", params={"status": "pending", **search})
        ).text()
        assert "No invitations match." in page, search


async def test_resend_and_revoke_the_selected_rows(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    for email, status in (
        ("ann@example.com", "pending"),
        ("bob@example.com", "expired"),
        ("cid@example.com", "pending"),
        ("dee@example.com", "accepted"),
    ):
        backend.add_invitation(email, portal, status=status)
    ids = {i["email"]: i["id"] for i in backend.invitations.values()}
    page = await (await gw.get("/admin/invitations?status=all")).text()
    assert f'<input type="checkbox" id="select-{ids["ann@example.com"]}" name="ids"' in page
    assert '<form id="bulk-form" method="post" action="/admin/invitations/bulk"' in page

    back = "/admin/invitations?status=all"
    form = [("csrf_token", await csrf(gw)), ("back", back), ("action", "resend")]
    form += [("ids", i) for i in ids.values()]
    response = await gw.post("/admin/invitations/bulk", data=form, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == back
    assert await flash_of(gw, response) == (
        "3 resent; 1 could not be resent: already accepted (dee@example.com)"
    )
    assert [backend.invitations[i]["send_count"] for i in ids.values()] == [2, 2, 2, 1]

    form[2] = ("action", "revoke")
    response = await gw.post("/admin/invitations/bulk", data=form, allow_redirects=False)
    assert await flash_of(gw, response) == (
        "3 revoked; 1 could not be revoked: already accepted (dee@example.com)"
    )
    statuses = [backend.invitations[i]["status"] for i in ids.values()]
    assert statuses == ["revoked", "revoked", "revoked", "accepted"]
    form[2] = ("action", "resend")
    response = await gw.post("/admin/invitations/bulk", data=form, allow_redirects=False)
    assert await flash_of(gw, response) == (
        "0 resent; 3 could not be resent: revoked (ann@example.com, bob@example.com,"
        " cid@example.com); 1 could not be resent: already accepted (dee@example.com)"
    )

    # Nothing selected; no CSRF token; a made-up action.
    response = await gw.post("/admin/invitations/bulk", data=form[:3], allow_redirects=False)
    assert await flash_of(gw, response) == "Select at least one invitation first."
    response = await gw.post("/admin/invitations/bulk", data=form[1:], allow_redirects=False)
    assert response.status == 403
    form[2] = ("action", "delete")
    response = await gw.post("/admin/invitations/bulk", data=form, allow_redirects=False)
    assert response.status == 422
    assert [backend.invitations[i]["status"] for i in ids.values()] == statuses


def test_a_forged_bulk_flash_shows_nothing() -> None:
    assert bulk_text("not json") is None
    assert bulk_text('{"a":"drop","ok":1,"no":[]}') is None
    assert bulk_text('{"a":"revoke","ok":2,"no":[["x",5,["a@b.example"]]]}') == (
        "2 revoked; 5 could not be revoked: refused (a@b.example and 4 more)"
    )
    # Numbers no int holds (JSON's 1e999 is infinity, NaN): nothing, not a 500 page.
    assert bulk_text('{"a":"resend","ok":1e999,"no":[]}') is None
    assert bulk_text('{"a":"resend","ok":1,"no":[["x",NaN,[]]]}') is None


async def test_the_portal_filter_tells_portals_of_one_title_apart(
    gw: TestClient, backend: Backend
) -> None:
    """Titles aren't unique (slugs are): two portals called "Acme Rebrand" were two options
    "Acme Rebrand" in the Invitations and Activity screens' Portal filter, one of them the
    wrong one. A title two portals share now shows each one's address (the Activity
    screen's filter is the same template code)."""
    await as_admin(gw, backend)
    first = backend.add_portal("Acme Rebrand")
    second = backend.add_portal("Acme Rebrand", slug="acme-rebrand-2")
    backend.add_portal("Globex")
    page = await (await gw.get("/admin/invitations")).text()
    select = page.split('id="filter-portal"', 1)[1].split("</select>", 1)[0]
    options = dict(re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', select))
    assert options[first["id"]] == "Acme Rebrand (/client-portal/acme-rebrand/)"
    assert options[second["id"]] == "Acme Rebrand (/client-portal/acme-rebrand-2/)"
    assert "Globex" in options.values()
