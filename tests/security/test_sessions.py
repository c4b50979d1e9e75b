"""Sessions on the real stack: a fresh id at log in, idle and absolute expiry, log out and
password reset ending the session server-side, and the cookies' flags."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.identity.domain import hash_token
from tests.security.conftest import (
    CLIENT_PASSWORD,
    Secrets,
    api,
    cookie,
    csrf_of,
    raw_post,
    unique_email,
)
from tests.security.flows import invite_link, logged_in, new_client, new_portal
from tests.support.smtp import accept_link, html_part
from tests.support.stack import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    CACHE_SECONDS,
    Browser,
    Stack,
    login,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.database_url)
    yield conn
    await conn.close()


async def test_log_in_issues_a_new_session_id_and_never_adopts_a_planted_one(
    stack: Stack, admin: Browser
) -> None:
    victim = Browser(stack.public_url)
    try:
        planted = "attacker-chosen-session-id-0123456789abcdef"
        own = cookie(admin, "cp_session")  # a real session of someone else, planted too
        assert own
        for value in (planted, own):
            victim.session.cookie_jar.update_cookies(
                {"cp_session": value}, response_url=URL(stack.public_url)
            )
            _, url, html = await victim.get("/login")
            before = cookie(victim, "cp_session")
            code, url, html = await victim.submit(
                url, html, "Log In", {"Email": ADMIN_EMAIL, "Password": ADMIN_PASSWORD}
            )
            assert code == 200 and "/admin" in url
            after = cookie(victim, "cp_session")
            assert after and after not in {planted, own, before}
        assert not await logged_in(stack, planted)
        # The session whose cookie the log in replaced is over: nobody holds it any more
        # but whoever copied it.
        assert not await logged_in(stack, own)
    finally:
        await victim.close()


async def test_a_log_in_over_a_session_ends_that_session(
    stack: Stack,
) -> None:
    """A shared computer: someone logs in (or accepts an invitation) without logging the
    previous person out. Their cookie is replaced, and their session must end with it,
    not stay valid on the server for anyone who had copied it."""
    browser = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
    try:
        first = cookie(browser, "cp_session")
        assert first and await logged_in(stack, first)
        _, url, html = await browser.get("/login")
        code, url, _ = await browser.submit(
            url, html, "Log In", {"Email": ADMIN_EMAIL, "Password": ADMIN_PASSWORD}
        )
        assert code == 200 and "/admin" in url
        second = cookie(browser, "cp_session")
        assert second and second != first and await logged_in(stack, second)
        assert not await logged_in(stack, first)
    finally:
        await browser.close()


async def test_an_accept_over_a_session_ends_that_session(stack: Stack, admin: Browser) -> None:
    """SECURITY.md: the session whose cookie a log in *or an accept* replaces is ended.
    On one shared browser: a client is logged in; the next person sets a password from
    their invitation (a new account), then a third logs in to accept theirs (an account
    they had). Each time the session whose cookie was replaced is over on the server."""
    first = await new_client(stack, admin)
    third = await new_client(stack, admin)
    shared = first.browser
    try:
        before = cookie(shared, "cp_session")
        assert before and await logged_in(stack, before)
        portal = await new_portal(admin)
        link = await invite_link(stack, admin, portal["id"], unique_email())
        code, url, html = await shared.get(link)
        code, url, _ = await shared.submit(
            url,
            html,
            "Set Password",
            {"Password": CLIENT_PASSWORD, "Confirm Password": CLIENT_PASSWORD},
        )
        assert code == 200 and f"/client-portal/{portal['slug']}/" in url
        second = cookie(shared, "cp_session")
        assert second and second != before and await logged_in(stack, second)
        assert not await logged_in(stack, before)

        portal = await new_portal(admin)
        status, body = await api(
            admin, "POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": third.email}
        )
        assert status == 201, body
        code, url, html = await shared.get(
            accept_link((await stack.sink.wait_for(third.email, count=2))[-1])
        )
        assert code == 200 and "log in to accept" in html
        code, url, _ = await shared.submit(url, html, "Log In", {"Password": CLIENT_PASSWORD})
        assert code == 200 and f"/client-portal/{portal['slug']}/" in url
        last = cookie(shared, "cp_session")
        assert last and last not in {before, second} and await logged_in(stack, last)
        assert not await logged_in(stack, second)
    finally:
        await third.browser.close()
        await shared.close()


async def test_log_out_ends_the_session_on_the_server(stack: Stack) -> None:
    browser = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
    try:
        token = cookie(browser, "cp_session")
        assert token and await logged_in(stack, token)
        code, _, html = await browser.get("/admin/portals")
        code, url, html = await browser.submit(browser.last_url, html, "Log out")
        assert "/login" in url
        # The old cookie, replayed from elsewhere, opens nothing.
        assert not await logged_in(stack, token)
    finally:
        await browser.close()


async def test_log_out_while_identity_is_down_still_logs_this_browser_out(stack: Stack) -> None:
    """Before, the 503 page kept the cookie: on a shared computer the next person opened
    the admin area once identity was back."""
    browser = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
    try:
        code, _, html = await browser.get("/admin/portals")
        stack["identity"].stop()
        try:
            code, url, _ = await browser.submit(browser.last_url, html, "Log out")
            assert code == 503, (code, url)
            assert not cookie(browser, "cp_session")
        finally:
            stack["identity"].start()
            await stack["identity"].wait_ready()
        code, url, _ = await browser.get("/admin/portals")
        assert "/login" in url, (code, url)
    finally:
        await browser.close()


async def test_a_password_reset_ends_every_session_and_its_link_works_once(
    stack: Stack, admin: Browser, secrets_seen: Secrets
) -> None:
    client = await new_client(stack, admin, secrets_seen)
    other_device = await login(stack, client.email, CLIENT_PASSWORD)
    try:
        sessions = [cookie(client.browser, "cp_session"), cookie(other_device, "cp_session")]
        assert all(sessions) and all([await logged_in(stack, s or "") for s in sessions])
        anonymous = Browser(stack.public_url)
        _, url, html = await anonymous.get("/forgot-password")
        await anonymous.submit(url, html, "Send Reset Link", {"Email": client.email})
        mails = await stack.sink.wait_for(client.email, 2)
        found = re.search(r'href="([^"]*/reset-password\?token=[^"]+)"', html_part(mails[-1]))
        assert found, html_part(mails[-1])[:500]
        link = found.group(1).replace("&amp;", "&")
        secrets_seen.add(link.split("token=", 1)[1])
        async with anonymous.session.get(link) as response:
            assert response.headers["Referrer-Policy"] == "no-referrer"
            page = await response.text()
        new_password = "a-brand-new-passphrase-99"
        secrets_seen.add(new_password)
        code, url, _ = await anonymous.submit(
            link,
            page,
            "Set Password",
            {"Password": new_password, "Confirm Password": new_password},
        )
        assert code == 200 and "/login" in url, url
        for session in sessions:
            assert not await logged_in(stack, session or "")
        # Single use, and the page says so (it said the link had expired).
        code, _, html = await anonymous.get(link)
        assert code == 410 and "Set Password" not in html
        assert "This reset link has already been used" in html, html[:800]
        assert 'href="/forgot-password"' in html
        await anonymous.close()
    finally:
        await client.browser.close()
        await other_device.close()


async def test_idle_and_absolute_expiry_are_enforced_by_identity(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """Time passes in the database: the real services, with their real 120-minute idle
    and 168-hour absolute limits, judge the rows."""
    browsers = [await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD) for _ in range(3)]
    try:
        fresh, idle, old = (cookie(b, "cp_session") or "" for b in browsers)
        fresh_id, idle_id, old_id = [
            await db.fetchval(
                "SELECT id FROM identity.sessions WHERE token_hash = $1", hash_token(token)
            )
            for token in (fresh, idle, old)
        ]
        await db.execute(
            "UPDATE identity.sessions SET last_seen_at = now() - interval '119 minutes' "
            "WHERE id = $1",
            fresh_id,
        )
        await db.execute(
            "UPDATE identity.sessions SET last_seen_at = now() - interval '121 minutes' "
            "WHERE id = $1",
            idle_id,
        )
        await db.execute(
            "UPDATE identity.sessions SET created_at = now() - interval '169 hours', "
            "expires_at = now() - interval '1 hour', last_seen_at = now() WHERE id = $1",
            old_id,
        )
        # Hours pass for the gateway too: what it cached of these sessions is gone by then.
        await asyncio.sleep(CACHE_SECONDS)
        assert await logged_in(stack, old) is False  # past the absolute limit, though active
        assert await logged_in(stack, idle) is False  # idle for longer than allowed
        assert await logged_in(stack, fresh) is True  # idle, but within the limit
        # ... and using it moved its idle deadline.
        seen = await db.fetchval(
            "SELECT now() - last_seen_at FROM identity.sessions WHERE id = $1", fresh_id
        )
        assert seen.total_seconds() < 60
    finally:
        for browser in browsers:
            await browser.close()


def _set_cookies(headers: aiohttp.typedefs.LooseHeaders) -> dict[str, str]:
    found = {}
    for value in headers.getall("Set-Cookie", []):  # type: ignore[union-attr]
        found[value.split("=", 1)[0]] = value
    return found


def _value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


async def test_cookies_are_httponly_and_samesite_over_http(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.public_url + "/login") as response:
            page = await response.text()
            csrf_cookie = _set_cookies(response.headers)["cp_csrf"]
        token = csrf_of(page)
    code, headers, _ = await raw_post(
        stack,
        "/login",
        {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token},
        # The cookie holds the token; each page shows it masked afresh (BREACH).
        cookies={"cp_csrf": _value(csrf_cookie)},
    )
    assert code == 303
    session_cookie = next(v for v in [headers.get("Set-Cookie", "")] if v.startswith("cp_session="))
    for value, samesite in ((csrf_cookie, "Lax"), (session_cookie, "Lax")):
        flags = [f.strip().lower() for f in value.split(";")]
        assert "httponly" in flags, value
        assert f"samesite={samesite.lower()}" in flags, value
        assert "secure" not in flags, value  # PUBLIC_URL is http here


async def test_cookies_are_secure_when_the_public_url_is_https(stack: Stack) -> None:
    """An in-process gateway with an https PUBLIC_URL, in front of the stack's identity."""
    settings = GatewaySettings(
        public_url="https://portal.example.com",
        database_url=stack.database_url,
        identity_url=stack.services["identity"].url,
        portals_url=stack.services["portals"].url,
        invitations_url=stack.services["invitations"].url,
        amqp_url=stack.env["AMQP_URL"],
        bus_prefix=stack.env["BUS_PREFIX"],
        # the stack's gateway key: with an https PUBLIC_URL the development keys are refused
        **stack.keys.settings("gateway"),
    )
    server = TestServer(create_app(settings))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/login")) as response:
                page = await response.text()
                csrf_cookie = _set_cookies(response.headers)["__Host-cp_csrf"]
            token = csrf_of(page)
            async with http.post(
                server.make_url("/login"),
                data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token},
                headers={"Cookie": f"__Host-cp_csrf={_value(csrf_cookie)}"},
                allow_redirects=False,
            ) as response:
                assert response.status == 303
                session_cookie = _set_cookies(response.headers)["__Host-cp_session"]
        for value in (csrf_cookie, session_cookie):
            flags = [f.strip().lower() for f in value.split(";")]
            # __Host-: Secure, path /, no Domain, so no subdomain can plant or replace it
            assert "secure" in flags and "httponly" in flags and "path=/" in flags, value
            assert not any(f.startswith("domain=") for f in flags), value
    finally:
        await server.close()
