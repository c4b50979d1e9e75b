"""Log in/out, home, security headers, CSRF and Origin checks, rate limits, errors."""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from services.gateway.app import create_app
from tests.gateway.conftest import csrf, log_in, make_settings, post_form
from tests.gateway.fakes import Backend
from tests.support.env import TestEnv
from tests.support.raw_http import raw_request

PASSWORD = "correct horse battery"


async def test_login_page_has_the_product_words(gw: TestClient) -> None:
    response = await gw.get("/login")
    html = await response.text()
    assert response.status == 200
    for text in (
        '<label for="email">Email</label>',
        '<label for="password">Password</label>',
        ">Log In</button>",
        ">Forgot password?</a>",
        'name="csrf_token"',
    ):
        assert text in html
    for landmark in ("<header", "<nav", "<main", "<footer"):
        assert landmark in html


async def test_security_headers_on_every_kind_of_response(gw: TestClient) -> None:
    for path in ("/login", "/nowhere", "/static/app.css"):
        response = await gw.get(path, allow_redirects=False)
        headers = response.headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        # No version for a scanner to match against advisories ("Python/3.11 aiohttp/3.14.5").
        assert headers["Server"] == "ClientPress"
        # Over plain http (a local run) no HSTS: it would pin localhost to https.
        assert "Strict-Transport-Security" not in headers
    assert (await gw.get("/login")).headers["Cache-Control"] == "no-store"
    token_page = await gw.get("/invitations/accept?token=nope")
    assert token_page.headers["Referrer-Policy"] == "no-referrer"
    assert token_page.headers["Cache-Control"] == "no-store"


async def test_unknown_page_is_an_html_404(gw: TestClient) -> None:
    response = await gw.get("/nowhere")
    assert response.status == 404
    assert "text/html" in response.headers["Content-Type"]
    assert "Page not found" in await response.text()


async def test_login_sends_admin_to_portals_with_a_safe_cookie(
    gw: TestClient, backend: Backend
) -> None:
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    response = await log_in(gw, admin, PASSWORD)
    assert response.headers["Location"] == "/admin/portals"
    cookie = response.cookies["cp_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert not cookie["secure"]


@pytest.mark.parametrize(
    ("next_path", "expected"),
    [("/admin/invitations", "/admin/invitations"), ("/client-portal/acme/", "/admin/portals")],
)
async def test_administrators_always_land_in_the_admin_area(
    gw: TestClient, backend: Backend, next_path: str, expected: str
) -> None:
    backend.login_redirect = True
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    data = {"email": admin["email"], "password": PASSWORD, "next": next_path}
    response = await post_form(gw, "/login", data)
    assert response.headers["Location"] == expected


async def test_bad_credentials_give_one_message(gw: TestClient, backend: Backend) -> None:
    backend.add_user("c@example.com", PASSWORD)
    for email, password in (("c@example.com", "wrong password!"), ("nobody@example.com", PASSWORD)):
        response = await post_form(gw, "/login", {"email": email, "password": password})
        assert response.status == 401
        html = await response.text()
        assert "The email or password is incorrect." in html
        assert 'role="alert"' in html


@pytest.mark.parametrize(
    ("next_path", "redirect", "expected"),
    [
        ("/client-portal/acme/", False, "/client-portal/acme/"),
        ("/client-portal/acme/", True, "/client-portal/"),
        ("//evil.example", False, "/"),
        ("https://evil.example", True, "/client-portal/"),
        ("", True, "/client-portal/"),
        ("", False, "/"),
    ],
)
async def test_client_login_destination(
    gw: TestClient, backend: Backend, next_path: str, redirect: bool, expected: str
) -> None:
    backend.login_redirect = redirect
    client = backend.add_user("c@example.com", PASSWORD)
    data = {"email": client["email"], "password": PASSWORD, "next": next_path}
    response = await post_form(gw, "/login", data)
    assert response.status == 303
    assert response.headers["Location"] == expected


async def test_home_depends_on_who_is_there(gw: TestClient, backend: Backend) -> None:
    response = await gw.get("/", allow_redirects=False)
    assert response.headers["Location"] == "/login"
    client = backend.add_user("c@example.com", PASSWORD)
    await log_in(gw, client, PASSWORD)
    response = await gw.get("/")
    assert 'href="/client-portal/"' in await response.text()


async def test_logout_revokes_the_session(gw: TestClient, backend: Backend) -> None:
    client = backend.add_user("c@example.com", PASSWORD)
    await log_in(gw, client, PASSWORD)
    assert backend.sessions
    response = await post_form(gw, "/logout")
    assert response.status == 303 and response.headers["Location"] == "/login"
    assert not backend.sessions
    response = await gw.get("/", allow_redirects=False)
    assert response.headers["Location"] == "/login"


async def test_logout_typed_in_the_address_bar_offers_the_button(
    gw: TestClient, backend: Backend
) -> None:
    """/logout is a client page: typed, bookmarked or linked to, a GET answered a bare
    "405 Method Not Allowed". It now shows a Log out button (the POST, with its CSRF
    token, still does it: a link or an image can't log anyone out), and without a
    session goes to the login page."""
    response = await gw.get("/logout", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login"
    client = backend.add_user("c@example.com", PASSWORD)
    await log_in(gw, client, PASSWORD)
    response = await gw.get("/logout", allow_redirects=False)
    assert response.status == 200
    page = await response.text()
    main = page.split("<main", 1)[1]
    assert '<form method="post" action="/logout"' in main
    assert '<button type="submit">Log out</button>' in main
    assert backend.sessions  # still logged in: the page alone ends nothing
    response = await post_form(gw, "/logout")
    assert response.status == 303 and not backend.sessions


async def test_revoked_session_stops_on_the_next_request(gw: TestClient, backend: Backend) -> None:
    client = backend.add_user("c@example.com", PASSWORD)
    await log_in(gw, client, PASSWORD)
    assert (await gw.get("/", allow_redirects=False)).status == 200
    backend.sessions.clear()
    response = await gw.get("/", allow_redirects=False)
    assert response.headers["Location"] == "/login"


async def test_a_cookie_that_cannot_be_ours_is_no_session_and_no_token(
    gw: TestClient, backend: Backend
) -> None:
    """A cookie holding a byte that isn't UTF-8 (a broken or planted one) is as no cookie:
    the pages answer (the session cookie is cleared, a fresh CSRF token given), never 500."""
    bad = b"\xff\xfe" + b"a" * 41
    for path in (b"/login", b"/client-portal/", b"/admin/portals"):
        status, head, _ = await raw_request(
            gw.server, b"GET " + path + b" HTTP/1.1\r\nCookie: cp_session=" + bad
        )
        assert status in (200, 302, 303), (path, status)
        assert b"Set-Cookie: cp_session=;" in head or b'Set-Cookie: cp_session="";' in head, path
    status, _, body = await raw_request(
        gw.server, b"GET /api/v1/portals HTTP/1.1\r\nCookie: cp_session=" + bad
    )
    assert (status, orjson.loads(body)["error"]["code"]) == (401, "no_session")
    status, head, _ = await raw_request(gw.server, b"GET /login HTTP/1.1\r\nCookie: cp_csrf=" + bad)
    assert status == 200 and b"Set-Cookie: cp_csrf=" in head  # a fresh token, as with none
    status, _, page = await raw_request(
        gw.server,
        b"POST /logout HTTP/1.1\r\nCookie: cp_csrf="
        + bad
        + b"\r\nContent-Type: application/x-www-form-urlencoded",
        b"csrf_token=%ff%fe" + b"a" * 41,
    )
    assert status == 403 and b"The form expired, please try again." in page
    token = await csrf(gw)
    status, _, _ = await raw_request(
        gw.server,
        b"POST /logout HTTP/1.1\r\nCookie: cp_session="
        + bad
        + b"; cp_csrf="
        + token.encode()
        + b"\r\nContent-Type: application/x-www-form-urlencoded",
        b"csrf_token=" + token.encode(),
    )
    assert status == 303
    for flash in (bad, b"invitation_sent|" + bad):
        status, _, _ = await raw_request(
            gw.server, b"GET /login HTTP/1.1\r\nCookie: cp_flash=" + flash
        )
        assert status == 200, flash


async def test_post_without_csrf_token_is_refused(gw: TestClient, backend: Backend) -> None:
    backend.add_user("c@example.com", PASSWORD)
    await csrf(gw)
    data = {"email": "c@example.com", "password": PASSWORD}
    response = await gw.post("/login", data=data, allow_redirects=False)
    assert response.status == 403
    page = await response.text()
    assert "The form expired, please try again." in page and "<title>Please try again" in page
    response = await gw.post("/login", data={**data, "csrf_token": "x" * 43}, allow_redirects=False)
    assert response.status == 403
    assert "identity.login" not in backend.calls


async def test_foreign_origin_is_refused(gw: TestClient, backend: Backend) -> None:
    backend.add_user("c@example.com", PASSWORD)
    data = {"email": "c@example.com", "password": PASSWORD}
    with capture_logs() as logs:
        bad = await post_form(gw, "/login", data, headers={"Origin": "http://evil.example"})
    assert bad.status == 403
    # The page said "The form expired, please try again.", which no retry mends: the cause
    # is where the form was, e.g. a site served on a port PUBLIC_URL doesn't name. The log
    # line says which origin came and which one PUBLIC_URL expects.
    page = await bad.text()
    assert "The request came from another site." in page
    assert "The form expired" not in page
    assert "<title>Request refused" in page and "Please try again" not in page
    refused = [e for e in logs if e["event"] == "csrf_origin_refused"]
    assert refused == [
        {
            "event": "csrf_origin_refused",
            "log_level": "warning",
            "origin": "http://evil.example",
            "public_url": "http://localhost:8080",
        }
    ]
    good = await post_form(gw, "/login", data, headers={"Origin": "http://localhost:8080"})
    assert good.status == 303


async def test_csrf_cookie_is_lax_and_http_only(gw: TestClient) -> None:
    """Lax: sent with a link followed from another site, so that page keeps the token the
    forms open in other tabs hold (tests/browser/test_cross_site_links.py); never with
    another site's post."""
    response = await gw.get("/login")
    cookie = response.cookies["cp_csrf"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"


async def test_login_is_rate_limited(backend: Backend) -> None:
    app = create_app(make_settings(backend, gateway_rate_per_email=3))
    async with TestClient(TestServer(app)) as client:
        data = {"email": "c@example.com", "password": "wrong password!"}
        statuses = [(await post_form(client, "/login", data)).status for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        response = await post_form(client, "/login", data)
        assert int(response.headers["Retry-After"]) > 0
        assert "Too many attempts" in await response.text()


async def test_service_down_shows_503_page(backend: Backend) -> None:
    settings = make_settings(backend).model_copy(update={"identity_url": "http://127.0.0.1:9"})
    async with TestClient(TestServer(create_app(settings))) as client:
        token = await csrf(client)
        data = {"csrf_token": token, "email": "c@example.com", "password": PASSWORD}
        response = await client.post("/login", data=data, allow_redirects=False)
        assert response.status == 503
        html = await response.text()
        assert "temporarily unavailable" in html
        assert "Traceback" not in html and "127.0.0.1:9" not in html


async def test_forgot_password_always_answers_the_same(gw: TestClient, backend: Backend) -> None:
    backend.add_user("c@example.com", PASSWORD)
    for email in ("c@example.com", "nobody@example.com"):
        response = await post_form(gw, "/forgot-password", {"email": email})
        assert response.status == 200
        assert "If an account exists for that email, we&#39;ve sent a link" in await response.text()


async def test_successful_logins_do_not_lock_an_account(backend: Backend) -> None:
    app = create_app(make_settings(backend, gateway_rate_per_email=2))
    user = backend.add_user("c@example.com", PASSWORD)
    async with TestClient(TestServer(app)) as client:
        for _ in range(4):
            await log_in(client, user, PASSWORD)


async def test_reset_password_flow(gw: TestClient, backend: Backend) -> None:
    user = backend.add_user("c@example.com", PASSWORD)
    backend.resets["good-token"] = user["id"]
    backend.resets["old-token"] = "expired"
    page = await gw.get("/reset-password?token=good-token")
    html = await page.text()
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert (
        '<label for="confirm">Confirm Password</label>' in html and ">Set Password</button>" in html
    )
    bad = await post_form(
        gw, "/reset-password", {"token": "good-token", "password": "x" * 12, "confirm": "y" * 12}
    )
    assert bad.status == 422
    new = "a brand new password"
    data = {"token": "good-token", "password": new, "confirm": new}
    response = await post_form(gw, "/reset-password", data)
    assert response.status == 303 and backend.passwords[user["id"]] == new
    expired = await gw.get("/reset-password?token=old-token")
    assert expired.status == 410 and "This reset link has expired" in await expired.text()
    # A link already used says so (it said "expired"), and offers a new one the same way.
    for used in (
        await gw.get("/reset-password?token=good-token"),
        await post_form(gw, "/reset-password", data),
    ):
        html = await used.text()
        assert used.status == 410 and "This reset link has already been used" in html
        assert "expired" not in html and 'href="/forgot-password"' in html
    assert backend.passwords[user["id"]] == new
    assert (await gw.get("/reset-password?token=nope")).status == 404
    # In the reader's language (it was English on French pages).
    french = {"Accept-Language": "fr"}
    expired = await gw.get("/reset-password?token=old-token", headers=french)
    assert "Ce lien de réinitialisation a expiré" in await expired.text()
    invalid = await gw.get("/reset-password?token=nope", headers=french)
    assert "Ce lien de réinitialisation n&#39;est pas valide" in await invalid.text()
    german = await gw.get("/reset-password?token=good-token", headers={"Accept-Language": "de"})
    assert "Dieser Link zum Zurücksetzen wurde bereits benutzt" in await german.text()


async def test_under_https_the_cookies_carry_the_host_prefix(
    backend: Backend, migrated_schemas: TestEnv
) -> None:
    """``__Host-``: browsers accept the cookie only Secure, for this host and path /, so a
    sibling subdomain can neither plant nor overwrite a session or CSRF cookie."""
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    settings = make_settings(
        backend,
        public_url="https://portal.agency.example",
        **migrated_schemas.keys.settings("gateway"),
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        page = await client.get("/login")
        # Browsers keep to https for this host from now on: a network in the middle can't
        # serve the log in page over http the next time.
        for path in ("/login", "/nowhere", "/static/app.css"):
            hsts = (await client.get(path)).headers.get("Strict-Transport-Security")
            assert hsts == "max-age=31536000", (path, hsts)
        (csrf_header,) = page.headers.getall("Set-Cookie")
        assert csrf_header.startswith("__Host-cp_csrf=")
        assert "Secure" in csrf_header and "Path=/" in csrf_header
        assert "Domain" not in csrf_header
        token = csrf_header.split(";", 1)[0].split("=", 1)[1]
        response = await client.post(
            "/login",
            data={"csrf_token": token, "email": admin["email"], "password": PASSWORD},
            headers={"Cookie": f"__Host-cp_csrf={token}"},
            allow_redirects=False,
        )
        assert response.status == 303, await response.text()
        (session_header,) = [h for h in response.headers.getall("Set-Cookie") if "cp_session" in h]
        assert session_header.startswith("__Host-cp_session=")
        assert "Secure" in session_header and "Path=/" in session_header
        assert "Domain" not in session_header
        session = session_header.split(";", 1)[0].split("=", 1)[1]
        logged_in = await client.get(
            "/admin/portals",
            headers={"Cookie": f"__Host-cp_session={session}"},
            allow_redirects=False,
        )
        assert logged_in.status == 200
        # The unprefixed name (which any subdomain could set) is not a session here.
        planted = await client.get(
            "/admin/portals", headers={"Cookie": f"cp_session={session}"}, allow_redirects=False
        )
        assert planted.status == 303 and "/login" in planted.headers["Location"]
    finally:
        await client.close()


async def test_under_https_a_flash_message_a_sibling_subdomain_plants_is_not_shown(
    backend: Backend, migrated_schemas: TestEnv
) -> None:
    """The flash cookie (the message a page shows once after a change) kept its plain name
    under https: any subdomain of the agency's domain could set ``cp_flash`` for the
    portal's host (``Domain=agency.example``), and the log in page then said "Invitation
    resent to <the planter's words>", again on every page (a domain cookie outlives the
    page's deletion of the host's own). Under https its name carries ``__Host-`` too."""
    backend.add_user("c@example.com", PASSWORD)
    settings = make_settings(
        backend,
        public_url="https://portal.agency.example",
        **migrated_schemas.keys.settings("gateway"),
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    planted = "Your account is locked. Call +1 555 0100 to unlock it"
    try:
        page = await client.get(
            "/login", headers={"Cookie": f"cp_flash=invitation_resent|{quote(planted)}"}
        )
        assert page.status == 200
        assert "Your account is locked" not in await page.text()
        # The gateway's own flash still reaches the next page, under the prefixed name.
        token = page.cookies["__Host-cp_csrf"].value
        logged_out = await client.post(
            "/logout",
            data={"csrf_token": token},
            headers={"Cookie": f"__Host-cp_csrf={token}"},
            allow_redirects=False,
        )
        assert logged_out.status == 303
        (flash,) = [h for h in logged_out.headers.getall("Set-Cookie") if "cp_flash" in h]
        assert flash.startswith("__Host-cp_flash=") and "Secure" in flash, flash
        assert "Domain" not in flash and "Path=/" in flash, flash
        value = flash.split(";", 1)[0].split("=", 1)[1]
        shown = await client.get(
            "/login", headers={"Cookie": f"__Host-cp_csrf={token}; __Host-cp_flash={value}"}
        )
        assert "You have been logged out." in await shown.text()
        # Shown once: forgotten with the attributes a __Host- cookie must be set with.
        (gone,) = [h for h in shown.headers.getall("Set-Cookie") if "cp_flash" in h]
        assert gone.startswith('__Host-cp_flash=""') and "Secure" in gone, gone
    finally:
        await client.close()
