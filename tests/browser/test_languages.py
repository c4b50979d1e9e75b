"""Issue 17 in a real browser: a German invitation end to end (staff invite with locale
"de" through the API; the accept page and, after Set Password, the portal are German), and
an account that picks Deutsch on /account sees German pages."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import new_context
from tests.browser.pages import (
    CLIENT_PASSWORD,
    add_portal,
    check_accessible,
    client_of,
    latest_html,
    latest_link,
    log_in_admin,
    screenshot,
)
from tests.support.stack import API_KEY, Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


async def invite_by_api(stack: Stack, portal_id: str, email: str, locale: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.public_url}/api/v1/portals/{portal_id}/invitations",
            json={"email": email, "locale": locale},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response,
    ):
        body = await response.json()
        assert response.status == 201, body
        invitation: dict[str, object] = body["invitation"]
        return invitation


async def test_a_german_invitation_opens_german_pages(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Wunderwerk Projekt", "Willkommen im Projekt.")
    portal_id = editor_url.rstrip("/").split("/")[-1]
    email = unique("greta")
    invitation = await invite_by_api(stack, portal_id, email, "de")
    assert invitation["locale"] == "de"
    link = await latest_link(stack.sink, email)
    # The email is German too (the mailer renders in the job's language).
    email_html = await latest_html(stack.sink, email)
    assert "Einladung annehmen" in email_html and "hat Sie" in email_html
    (message,) = await stack.sink.wait_for(email, 1)
    assert message["Content-Language"] == "de"

    # An English browser: the invitation's language comes first.
    client_context = await new_context(chromium, stack)
    try:
        client = await client_context.new_page()
        await client.goto(link)
        await expect(client.locator("html")).to_have_attribute("lang", "de")
        await expect(client.get_by_role("heading", level=1)).to_have_text("Einladung annehmen")
        await check_accessible(client)
        await screenshot(client, "accept-german")
        await client.get_by_label("Passwort", exact=True).fill(CLIENT_PASSWORD)
        await client.get_by_label("Passwort bestätigen", exact=True).fill(CLIENT_PASSWORD)
        await client.get_by_role("button", name="Passwort festlegen").click()
        await expect(client).to_have_url(
            re.compile(r"/client-portal/wunderwerk-projekt[a-z0-9-]*/$")
        )
        # The new account kept the invitation's language.
        await expect(client.locator("html")).to_have_attribute("lang", "de")
        await expect(client.get_by_role("button", name="Abmelden")).to_be_visible()
        await expect(client.get_by_role("link", name="Konto")).to_be_visible()
    finally:
        await client_context.close()


async def test_an_account_switches_to_german(page: Page, chromium: Browser, stack: Stack) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Sprachwechsel", "Hallo.")
    email = unique("karl")
    async with client_of(chromium, stack, page, editor_url, email) as (_, client):
        await expect(client.locator("html")).to_have_attribute("lang", "en")
        await client.get_by_role("link", name="Account").click()
        await expect(client.get_by_role("heading", level=1)).to_have_text("Account")
        await check_accessible(client)
        await client.get_by_label("Language", exact=True).select_option("de")
        await client.get_by_label("Time Zone", exact=True).fill("Europe/Berlin")
        await client.get_by_role("button", name="Save").click()
        await expect(client.get_by_role("status")).to_have_text(
            "Ihre Sprache und Zeitzone sind gespeichert."
        )
        await expect(client.locator("html")).to_have_attribute("lang", "de")
        await expect(client.get_by_role("heading", level=1)).to_have_text("Konto")
        await screenshot(client, "account-german")
        await client.get_by_role("link", name="Meine Portale").click()
        await expect(client.locator("html")).to_have_attribute("lang", "de")
        await expect(client.get_by_role("button", name="Abmelden")).to_be_visible()
