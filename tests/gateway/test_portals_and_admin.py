"""/client-portal/ cases, admin pages and the role gate on every /admin and /api route."""

from __future__ import annotations

import html
import re
import uuid

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from tests.gateway.conftest import csrf, log_in, make_settings, post_form
from tests.gateway.fakes import Backend, Json
from tests.support.raw_http import raw_request

PASSWORD = "correct horse battery"
PUBLIC_API = {"/api/v1/openapi.json", "/api/docs"}


async def as_admin(gw: TestClient, backend: Backend) -> Json:
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)
    return admin


async def as_client(gw: TestClient, backend: Backend) -> Json:
    client = backend.add_user("c@example.com", PASSWORD)
    await log_in(gw, client, PASSWORD)
    return client


async def test_client_portal_needs_login(gw: TestClient) -> None:
    response = await gw.get("/client-portal/", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/login?next=/client-portal/"


async def test_one_active_portal_redirects_to_it(gw: TestClient, backend: Backend) -> None:
    client = await as_client(gw, backend)
    backend.add_portal("Acme", client_id=client["id"])
    backend.add_portal("Old", status="archived", client_id=client["id"])
    response = await gw.get("/client-portal/", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/client-portal/acme/"


async def test_several_portals_are_listed_and_none_is_friendly(
    gw: TestClient, backend: Backend
) -> None:
    client = await as_client(gw, backend)
    response = await gw.get("/client-portal/")
    assert "You don't have a portal yet." in await response.text()
    backend.add_portal("Acme", client_id=client["id"])
    backend.add_portal("Beta", sub_client_ids=[client["id"]])
    html = await (await gw.get("/client-portal/")).text()
    assert 'href="/client-portal/acme/"' in html and 'href="/client-portal/beta/"' in html


async def test_the_list_tells_portals_of_one_title_apart(gw: TestClient, backend: Backend) -> None:
    """Titles aren't unique (slugs are): a client on two portals called "Acme Rebrand" saw
    two identical entries. A title two portals share shows each one's address, as the
    admin screens' Portal filter does; a title no other portal has reads as before."""
    client = await as_client(gw, backend)
    backend.add_portal("Acme Rebrand", client_id=client["id"])
    backend.add_portal("Acme Rebrand", slug="acme-rebrand-2", sub_client_ids=[client["id"]])
    backend.add_portal("Globex", client_id=client["id"])
    page = await (await gw.get("/client-portal/")).text()
    entries = dict(re.findall(r'<a href="(/client-portal/[^"]+)" dir="auto">([^<]*)</a>', page))
    assert entries == {
        "/client-portal/acme-rebrand/": "Acme Rebrand (/client-portal/acme-rebrand/)",
        "/client-portal/acme-rebrand-2/": "Acme Rebrand (/client-portal/acme-rebrand-2/)",
        "/client-portal/globex/": "Globex",
    }


async def test_portal_page_cases(gw: TestClient, backend: Backend) -> None:
    client = await as_client(gw, backend)
    backend.add_portal("Acme", client_id=client["id"])
    backend.add_portal("Paused", status="pending", client_id=client["id"])
    backend.add_portal("Someone Else")
    html = await (await gw.get("/client-portal/acme/")).text()
    assert "<p>Welcome to <strong>Acme</strong></p>" in html
    paused = await gw.get("/client-portal/paused/")
    text = await paused.text()
    assert "This portal isn't available right now." in text
    assert "Welcome to" not in text
    assert (await gw.get("/client-portal/someone-else/")).status == 404
    assert (await gw.get("/client-portal/..%2Fportals/")).status == 404


async def test_admin_may_view_any_portal(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    backend.add_portal("Someone Else")
    assert (await gw.get("/client-portal/someone-else/")).status == 200


def _guarded_routes(app: object) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():  # type: ignore[attr-defined]
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if route.method == "HEAD" or not path.startswith(("/admin", "/api")):
            continue
        if path in PUBLIC_API:
            continue
        path = path.replace("{id}", str(uuid.uuid4()))
        routes.append((route.method, path))
    return routes


async def test_every_admin_and_api_route_refuses_a_client(gw: TestClient, backend: Backend) -> None:
    await as_client(gw, backend)
    token = await csrf(gw)
    routes = _guarded_routes(gw.server.app)
    assert len(routes) > 20
    for method, path in routes:
        kwargs: dict[str, object] = {"allow_redirects": False}
        if path.startswith("/api"):
            kwargs["headers"] = {"X-CSRF-Token": token}
            kwargs["json"] = {}
        elif method != "GET":
            kwargs["data"] = {"csrf_token": token}
        response = await gw.request(method, path, **kwargs)
        expected = 403 if path.startswith("/api") else 404
        assert response.status == expected, (method, path, response.status)
    assert not [c for c in backend.calls if c.startswith(("invitations.invite", "portals."))]


async def test_every_admin_and_api_route_needs_a_login(gw: TestClient) -> None:
    token = await csrf(gw)
    for method, path in _guarded_routes(gw.server.app):
        kwargs: dict[str, object] = {"allow_redirects": False}
        if path.startswith("/api"):
            kwargs["headers"] = {"X-CSRF-Token": token}
        elif method != "GET":
            kwargs["data"] = {"csrf_token": token}
        response = await gw.request(method, path, **kwargs)
        if path.startswith("/api"):
            assert response.status == 401, (method, path)
            assert (await response.json())["error"]["code"] == "no_session"
        else:
            assert response.status == 303, (method, path)
            assert response.headers["Location"].startswith("/login?next=/admin")


async def test_all_portals_and_editor(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    html = await (await gw.get("/admin/portals")).text()
    assert ">Add New Portal</a>" in html
    assert f'href="/admin/portals/{portal["id"]}" dir="auto">Acme</a>' in html
    new = await gw.get("/admin/portals/new")
    assert new.status == 200 and ">Save Portal</button>" in await new.text()
    empty = await post_form(gw, "/admin/portals/new", {"title": " ", "status": "active"})
    assert empty.status == 422 and 'aria-describedby="title-error"' in await empty.text()
    editor = await (await gw.get(f"/admin/portals/{portal['id']}")).text()
    for text in (
        '<label for="title">Title</label>',
        '<label for="content">Content</label>',
        '<label for="status">Status</label>',
        ">Save Portal</button>",
        "<h2>Invite Client</h2>",
        '<label for="invite_email">Email</label>',
        ">Send Invitation</button>",
        '<label for="client_id">Client</label>',
        '<label for="add_sub_client">Sub-Clients</label>',
        ">Active</option>",
        ">Pending</option>",
        ">Archived</option>",
    ):
        assert text in editor, text


async def test_create_then_save_portal_with_client_and_sub_clients(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    response = await post_form(
        gw, "/admin/portals/new", {"title": "New One", "content": "Hi", "status": "active"}
    )
    assert response.status == 303
    portal_id = response.headers["Location"].rsplit("/", 1)[1]
    assert "Portal created." in await (await gw.get(response.headers["Location"])).text()
    ann = backend.add_user("ann@example.com", PASSWORD)
    bob = backend.add_user("bob@example.com", PASSWORD)
    data = {
        "title": "New One",
        "content": "Hi",
        "status": "active",
        "client_id": ann["id"],
        "add_sub_client": bob["id"],
    }
    response = await post_form(gw, f"/admin/portals/{portal_id}", data)
    assert response.status == 303
    portal = backend.portals[portal_id]
    assert portal["client_id"] == ann["id"] and portal["sub_client_ids"] == [bob["id"]]
    data = {**data, "add_sub_client": "", "remove_sub_client": bob["id"]}
    await post_form(gw, f"/admin/portals/{portal_id}", data)
    assert portal["sub_client_ids"] == []
    bad = await post_form(
        gw, f"/admin/portals/{portal_id}", {**data, "client_id": str(uuid.uuid4())}
    )
    assert bad.status == 422
    assert "Choose an existing user." in await bad.text()


# Markdown in German, 59,000 characters: inside the 60,000 allowed, but 61 KB of UTF-8
# and twice that form-encoded.
GERMAN = (
    "## Über uns\n\nWir begrüßen Sie herzlich in Ihrem Kundenportal: "
    "[Zeitplan](https://example.com/plan) & *Entwürfe*.\n\n"
) * 600


async def test_a_portal_of_59000_characters_in_german_is_saved_from_the_editor_and_the_api(
    gw: TestClient, backend: Backend
) -> None:
    """The gateway took at most 64 KiB a request: Content far inside its 60,000 characters
    was answered 413 "Request Entity Too Large" (the editor's page lost what was typed)."""
    await as_admin(gw, backend)
    content = GERMAN[:59_000]
    made = await post_form(
        gw, "/admin/portals/new", {"title": "Deutsch", "content": content, "status": "active"}
    )
    assert made.status == 303, await made.text()
    portal_id = made.headers["Location"].rsplit("/", 1)[1]
    assert backend.portals[portal_id]["content"] == content
    saved = await post_form(
        gw,
        f"/admin/portals/{portal_id}",
        {"title": "Deutsch", "content": content[::-1], "status": "active"},
    )
    assert saved.status == 303 and backend.portals[portal_id]["content"] == content[::-1]
    headers = {"X-CSRF-Token": await csrf(gw)}
    api = await gw.post(
        "/api/v1/portals", json={"title": "Deutsch API", "content": content}, headers=headers
    )
    assert api.status == 201, await api.text()
    patched = await gw.patch(
        f"/api/v1/portals/{(await api.json())['id']}", json={"content": content}, headers=headers
    )
    assert patched.status == 200, await patched.text()
    # One character past the limit is refused beside the field, the form kept: the editor
    # cut Content to 60,000 characters without a word (a 1 MiB form carries far more).
    too_long = content + "x" * 1_001
    refused = await post_form(
        gw,
        f"/admin/portals/{portal_id}",
        {"title": "Deutsch", "content": too_long, "status": "active"},
    )
    assert refused.status == 422
    page = html.unescape(await refused.text())
    assert "The Content is too long: at most 60,000 characters." in page
    assert too_long in page and backend.portals[portal_id]["content"] == content[::-1]
    # Past what any valid Content needs: told why, in words.
    huge = await post_form(gw, "/admin/portals/new", {"title": "X", "content": "ü" * 400_000})
    assert huge.status == 413
    assert "The Content is too long: at most 60,000 characters." in await huge.text()
    huge_api = await gw.post(
        "/api/v1/portals", json={"title": "X", "content": "x" * 1_100_000}, headers=headers
    )
    assert huge_api.status == 413
    assert (await huge_api.json())["error"]["code"] == "body_too_large"


async def test_invite_client_box(gw: TestClient, backend: Backend) -> None:
    admin = await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    path = f"/admin/portals/{portal['id']}/invite"
    response = await post_form(gw, path, {"email": "New@Example.COM"})
    assert response.status == 303
    page = await (await gw.get(response.headers["Location"])).text()
    assert "Invitation sent to New@example.com" in page
    assert f"invitations.invite:{admin['email']}" in backend.calls
    response = await post_form(gw, path, {"email": "New@example.com"})
    page = await (await gw.get(response.headers["Location"])).text()
    assert "An invitation was already pending for New@example.com; it has been resent." in page
    bad = await post_form(gw, path, {"email": "Ann <ann@example.com>"})
    assert bad.status == 422
    assert 'aria-describedby="invite_email-error"' in await bad.text()


@pytest.mark.parametrize("status", ["pending", "archived"])
async def test_inactive_portal_takes_no_invitations(
    gw: TestClient, backend: Backend, status: str
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme", status=status)
    response = await post_form(
        gw, f"/admin/portals/{portal['id']}/invite", {"email": "a@b.example"}
    )
    assert response.status == 422
    assert "This portal is not Active. Only Active portals can take invitations." in (
        await response.text()
    )


async def test_invitations_page_resend_and_revoke(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    backend.add_invitation("a@b.example", portal)
    invitation = next(iter(backend.invitations.values()))
    html = await (await gw.get("/admin/invitations")).text()
    assert "a@b.example" in html and ">Resend</button>" in html and ">Revoke</button>" in html
    assert "data-confirm=" in html
    response = await post_form(gw, f"/admin/invitations/{invitation['id']}/resend")
    assert response.status == 303 and invitation["send_count"] == 2
    response = await post_form(gw, f"/admin/invitations/{invitation['id']}/revoke")
    assert invitation["status"] == "revoked"
    page = await (await gw.get(response.headers["Location"])).text()
    assert "Invitation to a@b.example revoked." in page


@pytest.mark.parametrize(
    "back",
    [
        "/admin/invitations\r\nSet-Cookie: cp_session=planted",
        "/admin/invitations\t",
        "/admin/invitations?email=a\x1b",
        "/admin/invitations\\..\\",
        "/admin/invitations@evil.example",
        "//evil.example/admin/invitations",
    ],
)
async def test_a_forged_way_back_from_resend_and_revoke_lands_on_invitations(
    gw: TestClient, backend: Backend, back: str
) -> None:
    """The hidden "back" field comes from the form: whatever it says, the answer is a
    redirect to the Invitations screen, never a dropped connection or another page."""
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    backend.add_invitation("a@b.example", portal)
    invitation = next(iter(backend.invitations.values()))
    for path, extra in (
        (f"/admin/invitations/{invitation['id']}/resend", {}),
        ("/admin/invitations/bulk", {"action": "resend", "ids": invitation["id"]}),
        (f"/admin/invitations/{invitation['id']}/revoke", {}),
    ):
        response = await post_form(gw, path, {"back": back, **extra})
        assert response.status == 303, (path, response.status)
        assert response.headers["Location"] == "/admin/invitations", path
    # The way back to a filtered list still works (nothing selected: back with a word).
    filtered = "/admin/invitations?status=all&email=a%2Bb%40b.example"
    response = await post_form(
        gw, "/admin/invitations/bulk", {"back": filtered, "action": "resend"}
    )
    assert response.status == 303 and response.headers["Location"] == filtered


async def test_invitations_page_shows_a_retrying_delivery_with_its_next_try(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    backend.add_invitation("waiting@b.example", portal)
    invitation = next(iter(backend.invitations.values()))
    invitation.update(
        delivery="retrying",
        delivery_error="smtp_unreachable",
        delivery_next_attempt_at="2026-11-30T14:05:00+00:00",
    )
    html = await (await gw.get("/admin/invitations")).text()
    assert (
        'Retrying — next try at <time datetime="2026-11-30T14:05:00+00:00">'
        "2026-11-30 14:05 UTC</time>"
    ) in html
    assert "(smtp_unreachable)" in html


async def test_invitations_page_shows_a_withdrawn_delivery(
    gw: TestClient, backend: Backend
) -> None:
    """Revoked while its email waited for a retry: the email was withdrawn, not retrying."""
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    backend.add_invitation("withdrawn@b.example", portal)
    invitation = next(
        i for i in backend.invitations.values() if i["email"] == "withdrawn@b.example"
    )
    invitation.update(status="revoked", delivery="withdrawn")
    html = await (await gw.get("/admin/invitations?status=all")).text()
    row = next(r for r in html.split("<tr>") if "withdrawn@b.example" in r)
    assert "<td>Withdrawn</td>" in row and "Retrying" not in row
    response = await gw.get("/api/v1/invitations?status=revoked")
    assert response.status == 200, await response.text()
    assert "withdrawn" in {i["delivery"] for i in (await response.json())["items"]}


async def test_settings_page_saves_both_owners(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    html = await (await gw.get("/admin/settings")).text()
    assert '<label for="expiry">Invitation Link Expiry</label>' in html
    assert '<option value="14" selected>14 days</option>' in html
    assert '<label for="login_redirect">Login Redirect</label>' in html
    assert ">Save Settings</button>" in html
    data = {"invitation_expiry_days": "30", "login_redirect": "on"}
    response = await post_form(gw, "/admin/settings", data)
    assert response.status == 303
    assert backend.expiry_days == 30 and backend.login_redirect is True
    bad = await post_form(gw, "/admin/settings", {"invitation_expiry_days": "10"})
    assert bad.status == 422


async def test_users_page_and_disable(gw: TestClient, backend: Backend) -> None:
    await as_admin(gw, backend)
    client = backend.add_user("c@example.com", PASSWORD)
    html = await (await gw.get("/admin/users")).text()
    assert "c@example.com" in html and ">Disable</button>" in html
    response = await post_form(gw, f"/admin/users/{client['id']}/disable")
    assert response.status == 303 and client["disabled"]


async def test_api_key_works_without_session_or_csrf(backend: Backend) -> None:
    app = create_app(make_settings(backend, gateway_api_key="k" * 40))
    async with TestClient(TestServer(app)) as api:
        headers = {"Authorization": "Bearer " + "k" * 40}
        response = await api.post("/api/v1/portals", json={"title": "Via API"}, headers=headers)
        assert response.status == 201
        wrong = await api.get("/api/v1/portals", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401


async def test_a_call_with_a_key_is_answered_without_a_csrf_cookie(backend: Backend) -> None:
    """A CRM's call with its key never posts a form: the CSRF cookie every answer to it set
    (a new token, a cookie built and sent each call, about 4 % of the gateway's time on the
    single-invite path) was work for nothing. A browser's call still gets one."""
    app = create_app(make_settings(backend, gateway_api_key="k" * 40))
    async with TestClient(TestServer(app)) as api:
        headers = {"Authorization": "Bearer " + "k" * 40}
        response = await api.post("/api/v1/portals", json={"title": "Via API"}, headers=headers)
        assert response.status == 201
        assert "Set-Cookie" not in response.headers, response.headers.getall("Set-Cookie")
        page = await api.get("/login")
        assert page.status == 200 and "cp_csrf" in page.cookies


async def test_any_authorization_header_is_a_key_or_refused_never_a_500(
    backend: Backend,
) -> None:
    app = create_app(make_settings(backend, gateway_api_key="k" * 40))
    async with TestClient(TestServer(app)) as api:
        # RFC 9110 11.1: the scheme is case-insensitive.
        for scheme in ("bearer", "BEARER"):
            headers = {"Authorization": f"{scheme} {'k' * 40}"}
            assert (await api.get("/api/v1/portals", headers=headers)).status == 200, scheme
        asked = backend.key_checks
        for presented, code in (
            (b"\xff", "no_session"),  # a byte that isn't UTF-8
            (b"cpk_\xff", "invalid_api_key"),
            (b"cpk_" + b"A" * 5000, "invalid_api_key"),  # longer than any key identity makes
        ):
            status, _, body = await raw_request(
                api.server, b"GET /api/v1/portals HTTP/1.1\r\nAuthorization: Bearer " + presented
            )
            assert (status, orjson.loads(body)["error"]["code"]) == (401, code), presented[:10]
        assert backend.key_checks == asked  # none of them could be a key: identity not asked


async def test_a_save_landing_between_the_editors_read_and_write_is_merged_too(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    page = await (await gw.get(f"/admin/portals/{portal['id']}")).text()
    shown = re.search(r'name="shown" value="([^"]+)"', page)
    assert shown, page

    def someone_else_saves_first(target: Json) -> None:
        backend.before_patch = None
        target.update(title="Acme Group", revision=target["revision"] + 1)

    backend.before_patch = someone_else_saves_first
    form = {"title": "Acme Ltd", "content": portal["content"], "status": "active"}
    response = await post_form(
        gw, f"/admin/portals/{portal['id']}", {**form, "shown": shown.group(1)}
    )
    page = html.unescape(await response.text())
    assert response.status == 409, page
    assert "Someone else changed the Title to “Acme Group” while you were editing." in page
    assert portal["title"] == "Acme Group"


async def test_a_refused_save_keeps_the_client_and_sub_clients_chosen(
    gw: TestClient, backend: Backend
) -> None:
    await as_admin(gw, backend)
    ann, bob, cy, dee = (
        backend.add_user(f"{n}@example.com", PASSWORD) for n in ("ann", "bob", "cy", "dee")
    )
    portal = backend.add_portal("Acme", client_id=ann["id"], sub_client_ids=[bob["id"]])
    form = {
        "title": "",  # refused: Enter a title.
        "content": portal["content"],
        "status": "active",
        "client_id_shown": ann["id"],
        "client_id": cy["id"],
        "remove_sub_client": bob["id"],
        "add_sub_client": dee["id"],
    }
    response = await post_form(gw, f"/admin/portals/{portal['id']}", form)
    page = await response.text()
    assert response.status == 422 and "Enter a title." in page
    # What was chosen is still chosen, and the Client field still knows what it first showed.
    assert f'<option value="{cy["id"]}" selected>' in page
    assert f'<option value="{ann["id"]}">' in page
    assert page.count(f'<option value="{dee["id"]}" selected>') == 1  # in Sub-Clients only
    assert re.search(rf'name="remove_sub_client" value="{bob["id"]}"[^>]* checked', page)
    assert f'name="client_id_shown" value="{ann["id"]}"' in page


async def test_images_in_a_portals_content_may_come_from_https_addresses(
    gw: TestClient, backend: Backend
) -> None:
    """Content keeps ![logo](https://…) (portals' sanitiser); the portal page's policy lets
    the browser load it. Every other page keeps to our own images."""
    client = await as_client(gw, backend)
    backend.add_portal(
        "Acme",
        client_id=client["id"],
        content_html='<p><img src="https://cdn.example.com/plan.png" alt="plan"></p>',
    )
    page = await gw.get("/client-portal/acme/")
    assert '<img src="https://cdn.example.com/plan.png" alt="plan">' in await page.text()
    policy = page.headers["Content-Security-Policy"]
    assert "img-src 'self' data: https:;" in policy and "script-src 'self';" in policy
    for path in ("/client-portal/", "/login", "/account"):
        other = await gw.get(path, allow_redirects=False)
        assert "img-src 'self' data:;" in other.headers["Content-Security-Policy"], path


async def test_users_page_erases_a_user_after_a_confirmation_but_never_oneself(
    gw: TestClient, backend: Backend
) -> None:
    admin = await as_admin(gw, backend)
    client = backend.add_user("c@example.com", PASSWORD)
    page = html.unescape(await (await gw.get("/admin/users")).text())
    assert ">Erase</button>" in page
    assert f"Erase {client['email']} for good?" in page and "can't be undone" in page
    assert f"/admin/users/{admin['id']}/erase" not in page

    response = await post_form(gw, f"/admin/users/{client['id']}/erase")
    assert response.status == 303 and client["id"] not in backend.users
    shown = html.unescape(await (await gw.get(response.headers["Location"])).text())
    assert "User c@example.com erased" in shown
    # Clicked twice (or by two administrators at once): the second finds it done.
    twice = await post_form(gw, f"/admin/users/{client['id']}/erase")
    assert twice.status == 303
    shown = html.unescape(await (await gw.get(twice.headers["Location"])).text())
    assert "This user no longer exists: they were erased already." in shown

    mine = await post_form(gw, f"/admin/users/{admin['id']}/erase")
    assert mine.status == 422 and admin["id"] in backend.users
    assert "You can&#39;t erase your own account." in await mine.text()


async def test_the_api_erases_a_user_for_an_administrator_only(
    gw: TestClient, backend: Backend
) -> None:
    admin = await as_admin(gw, backend)
    client = backend.add_user("c@example.com", PASSWORD)
    headers = {"X-CSRF-Token": await csrf(gw)}
    response = await gw.post(f"/api/v1/users/{client['id']}/erase", headers=headers)
    assert response.status == 200 and (await response.json())["id"] == client["id"]
    assert client["id"] not in backend.users
    again = await gw.post(f"/api/v1/users/{client['id']}/erase", headers=headers)
    assert again.status == 404
    assert (await again.json())["error"]["code"] == "user_not_found"
    mine = await gw.post(f"/api/v1/users/{admin['id']}/erase", headers=headers)
    assert mine.status == 422
    assert (await mine.json())["error"]["code"] == "cannot_erase_self"
