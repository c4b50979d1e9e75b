"""CSRF, Origin and role checks for every route of the gateway's route table, on the
real stack, so that a route added later is covered without editing this file."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.security.conftest import api, cookie
from tests.security.flows import new_client, new_portal
from tests.support.stack import Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
PUBLIC_API = {"/api/v1/openapi.json", "/api/docs"}


def route_table() -> list[tuple[str, str]]:
    """(method, path pattern) of every route the gateway serves, HEAD and static aside."""
    app = create_app(GatewaySettings(public_url="http://127.0.0.1:9"))
    routes = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource else ""
        if route.method == "HEAD" or canonical.startswith("/static"):
            continue
        routes.add((route.method, canonical))
    return sorted(routes)


def concrete(pattern: str, ids: dict[str, str] | None = None) -> str:
    """A path for the pattern: {id} becomes the given (or a random) uuid, {slug} a slug."""
    ids = ids or {}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        return ids.get(name, "no-such-portal" if name == "slug" else str(uuid.uuid4()))

    return re.sub(r"\{(\w+)(?::[^}]*)?\}", fill, pattern)


def unsafe_routes() -> list[tuple[str, str]]:
    return [(m, p) for m, p in route_table() if m in UNSAFE]


def admin_routes() -> list[tuple[str, str]]:
    return [
        (m, p)
        for m, p in route_table()
        if (p == "/admin" or p.startswith("/admin/") or p.startswith("/api/"))
        and p not in PUBLIC_API
    ]


def test_the_route_table_has_the_routes_we_expect_to_guard() -> None:
    unsafe = unsafe_routes()
    assert ("POST", "/login") in unsafe and ("PUT", "/api/v1/settings/access") in unsafe
    assert len(unsafe) >= 18, unsafe
    assert len(admin_routes()) >= 25, admin_routes()


async def _send(
    browser: Browser,
    method: str,
    path: str,
    token: str | None,
    origin: str | None = None,
) -> int:
    headers = {} if origin is None else {"Origin": origin}
    url = browser.base + path
    if path.startswith("/api/"):
        if token is not None:
            headers["X-CSRF-Token"] = token
        kwargs: dict[str, object] = {"json": {}}
    else:
        kwargs = {"data": {"csrf_token": token} if token is not None else {"x": "1"}}
    async with browser.session.request(
        method, url, headers=headers, allow_redirects=False, **kwargs
    ) as response:
        await response.read()
        return response.status


async def test_every_state_changing_route_refuses_a_missing_or_wrong_csrf_token(
    stack: Stack, admin: Browser
) -> None:
    good = cookie(admin, "cp_csrf")
    assert good
    refused = []
    for method, pattern in unsafe_routes():
        path = concrete(pattern)
        for token in (None, "", "x" * 43, good[:-2] + "AA"):
            status = await _send(admin, method, path, token)
            refused.append((method, path, repr(token)[:10], status))
    wrong = [r for r in refused if r[3] != 403]
    assert not wrong, wrong
    # The session is still alive: the refusals were CSRF, not a lost session.
    code, _, _ = await admin.get("/admin/portals")
    assert code == 200


async def test_every_state_changing_route_refuses_a_foreign_origin(
    stack: Stack, admin: Browser
) -> None:
    good = cookie(admin, "cp_csrf")
    wrong = []
    for method, pattern in unsafe_routes():
        path = concrete(pattern)
        for origin in ("https://evil.example", "null", stack.public_url + ".evil.example"):
            # Even with the right token: a page on another site must not drive ours.
            # The token pages send no Referer, so a browser posts them with "Origin: null":
            # there the token alone decides (the tests above refuse a missing one).
            token_page = path.startswith(("/invitations/accept", "/reset-password"))
            status = await _send(
                admin, method, path, None if token_page and origin == "null" else good, origin
            )
            if status != 403:
                wrong.append((method, path, origin, status))
    assert not wrong, wrong


async def test_the_right_token_and_origin_get_past_the_csrf_check(
    stack: Stack, admin: Browser
) -> None:
    """The control for the two tests above: the same requests with the token are not
    refused as forgeries (random ids answer 404/422, not 403)."""
    good = cookie(admin, "cp_csrf")
    statuses = {}
    for method, pattern in unsafe_routes():
        if pattern in {"/logout"}:
            continue
        path = concrete(pattern)
        statuses[(method, path)] = await _send(admin, method, path, good, origin=stack.public_url)
    refused = {k: v for k, v in statuses.items() if v == 403}
    assert not refused, refused


async def test_a_cross_site_form_post_with_the_session_cookie_is_refused(
    stack: Stack, admin: Browser
) -> None:
    """What a hostile page's auto-submitting form sends: the victim's cookies (had the
    browser attached them), a foreign Origin, no token."""
    portal = await new_portal(admin)
    session = cookie(admin, "cp_session")
    async with (
        aiohttp.ClientSession() as other_site,
        other_site.post(
            f"{stack.public_url}/admin/portals/{portal['id']}",
            data={"title": "Defaced", "content": "pwned", "status": "archived"},
            cookies={"cp_session": session or ""},
            headers={"Origin": "https://evil.example", "Referer": "https://evil.example/x"},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status == 403
    status, body = await api(admin, "GET", f"/api/v1/portals/{portal['id']}")
    assert status == 200 and body["title"] == portal["title"] and body["status"] == "active"


async def test_every_admin_route_refuses_an_anonymous_visitor(
    stack: Stack, anonymous: Browser
) -> None:
    await anonymous.get("/login")  # a CSRF cookie, so unsafe requests reach the role gate
    token = cookie(anonymous, "cp_csrf")
    wrong = []
    for method, pattern in admin_routes():
        path = concrete(pattern)
        status = await _send(anonymous, method, path, token)
        expected = 401 if path.startswith("/api/") else 303
        if status != expected:
            wrong.append((method, path, status))
    assert not wrong, wrong


async def test_every_admin_route_refuses_a_client_session(stack: Stack, admin: Browser) -> None:
    client = await new_client(stack, admin)
    try:
        token = cookie(client.browser, "cp_csrf")
        ids = {"id": client.portal["id"]}
        wrong = []
        for method, pattern in admin_routes():
            path = concrete(pattern, ids)
            status = await _send(client.browser, method, path, token)
            expected = 403 if path.startswith("/api/") else 404
            if status != expected:
                wrong.append((method, path, status))
        assert not wrong, wrong
        # Still logged in and unchanged: the refusals were the role gate.
        code, url, _ = await client.browser.get(f"/client-portal/{client.portal['slug']}/")
        assert code == 200 and url.endswith(f"/client-portal/{client.portal['slug']}/")
        status, body = await api(admin, "GET", f"/api/v1/portals/{client.portal['id']}")
        assert body["title"] == client.portal["title"]
    finally:
        await client.browser.close()


async def test_a_client_sees_only_their_own_portals(stack: Stack, admin: Browser) -> None:
    first = await new_client(stack, admin, content="first secret")
    second = await new_client(stack, admin, content="second secret")
    try:
        code, _, html = await first.browser.get(f"/client-portal/{second.portal['slug']}/")
        assert code == 404 and "second secret" not in html
        code, _, html = await first.browser.get(f"/client-portal/{first.portal['slug']}/")
        assert code == 200 and "first secret" in html
        code, _, html = await first.browser.get("/client-portal/")
        assert second.portal["title"] not in html
        # An Active portal nobody invited the client to, and one that doesn't exist,
        # answer alike: no hint that the slug exists.
        other = await new_portal(admin, "third secret")
        code_a, _, html_a = await first.browser.get(f"/client-portal/{other['slug']}/")
        code_b, _, html_b = await first.browser.get("/client-portal/no-such-portal-here/")
        assert code_a == code_b == 404 and "third secret" not in html_a
    finally:
        await first.browser.close()
        await second.browser.close()
