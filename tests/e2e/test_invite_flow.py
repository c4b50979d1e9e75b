"""The whole invite flow through the five services, as a person walks it."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg
import pytest

from tests.e2e.conftest import Browser, Stack
from tests.e2e.flows import CLIENT_PASSWORD, accept_from_email, create_portal, invite, unique_email
from tests.support.servers import current as current_servers
from tests.support.smtp import accept_link, html_part, text_part
from tests.support.stack import db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_admin_invites_and_client_lands_on_portal_logged_in(
    stack: Stack, admin: Browser, browser: Browser
) -> None:
    title = f"Acme Rebrand {uuid.uuid4().hex[:6]}"
    editor_url, editor_html = await create_portal(admin, title, "Welcome to **your** portal.")
    email = unique_email()
    page = await invite(admin, editor_url, editor_html, email)
    assert f"Invitation sent to {email}" in page

    messages = await stack.sink.wait_for(email)
    assert len(messages) == 1
    message = messages[0]
    html = html_part(message)
    assert "Accept Invitation" in html
    assert title in html
    link = accept_link(message)
    assert link.startswith(stack.public_url + "/invitations/accept?token=")
    assert link in text_part(message)

    # Opening the link twice never consumes it.
    for _ in range(2):
        code, _, page = await browser.get(link)
        assert code == 200 and "Set Password" in page and title in page

    code, url, page = await accept_from_email(stack, browser, email)
    assert code == 200
    assert re.search(r"/client-portal/[a-z0-9-]+/$", url), url
    assert "<strong>your</strong>" in page  # the portal's content, rendered

    # The session is real: the portal list finds the portal again.
    code, url, page = await browser.get("/client-portal/")
    assert code == 200 and title in page

    # The account has the Client role, exactly once.
    rows = await db_fetch(
        stack, "SELECT role FROM identity.users WHERE lower(email) = lower($1)", email
    )
    assert [r["role"] for r in rows] == ["client"]

    # The link is single-use.
    code, _, page = await browser.get(link)
    assert "already been used" in page


async def test_sixteen_concurrent_accepts_make_exactly_one_account(
    stack: Stack, admin: Browser
) -> None:
    editor_url, editor_html = await create_portal(admin, "Race Portal", "race")
    email = unique_email("race")
    await invite(admin, editor_url, editor_html, email)
    link = accept_link((await stack.sink.wait_for(email))[-1])

    browsers = [Browser(stack.public_url) for _ in range(16)]
    try:
        pages = await asyncio.gather(*(b.get(link) for b in browsers))
        results = await asyncio.gather(
            *(
                b.submit(
                    url,
                    html,
                    "Set Password",
                    {"Password": CLIENT_PASSWORD, "Confirm Password": CLIENT_PASSWORD},
                )
                for b, (_, url, html) in zip(browsers, pages, strict=True)
            )
        )
    finally:
        await asyncio.gather(*(b.close() for b in browsers))
    landed = [url for _, url, _ in results if "/client-portal/" in url]
    assert len(landed) == 1, [u for _, u, _ in results]
    assert all(code < 500 for code, _, _ in results)
    conn = await asyncpg.connect(stack.database_url)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM identity.users WHERE lower(email) = lower($1)", email
        )
        access = await conn.fetchval(
            "SELECT count(*) FROM portals.access a JOIN identity.users u ON u.id = a.user_id"
            " WHERE lower(u.email) = lower($1)",
            email,
        )
    finally:
        await conn.close()
    assert count == 1
    assert access == 1


async def test_email_arrives_after_the_mailer_starts(
    stack: Stack, admin: Browser, browser: Browser
) -> None:
    stack["mailer"].stop()
    try:
        editor_url, editor_html = await create_portal(admin, "Mailer Down", "m")
        email = unique_email("late")
        await invite(admin, editor_url, editor_html, email)
        await asyncio.sleep(1.0)
        assert stack.sink.to(email) == []
    finally:
        stack["mailer"].start()
        await stack["mailer"].wait_ready()
    await stack.sink.wait_for(email)
    code, url, _ = await accept_from_email(stack, browser, email)
    assert "/client-portal/" in url


async def test_broker_connections_dropped_between_invite_and_email(
    stack: Stack, admin: Browser
) -> None:
    editor_url, editor_html = await create_portal(admin, "Broker Drop", "b")
    emails = [unique_email("drop") for _ in range(5)]
    dropped = asyncio.create_task(
        asyncio.to_thread(
            current_servers().rabbitmqctl, "close_all_connections", "e2e test: connection drop"
        )
    )
    for email in emails:
        await invite(admin, editor_url, editor_html, email)
        if email == emails[1]:
            await dropped
    for email in emails:
        assert len(await stack.sink.wait_for(email, timeout=60)) == 1
    await asyncio.sleep(1.0)
    for email in emails:
        assert len(stack.sink.to(email)) == 1, "an email was delivered twice"
