"""Issue 6, test 1: an admin invites a client and the client lands on the portal, all in
a real browser; the key screens are saved under docs/screenshots/."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import PHONE, new_context
from tests.browser.pages import (
    CLIENT_PASSWORD,
    add_portal,
    check_accessible,
    client_of,
    invite_client,
    latest_html,
    latest_link,
    log_in_admin,
    screenshot,
    screenshot_email,
    set_password,
)
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]

CONTENT = """Welcome to **your** project portal.

- Brand guidelines, version 2
- Logo files for print and web
- [Project timeline](https://example.com/timeline)
"""


async def test_admin_invites_and_client_lands_on_portal(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await page.goto("/login")
    await expect(page.get_by_role("link", name="Forgot password?")).to_be_visible()
    await check_accessible(page)
    await screenshot(page, "login")

    await log_in_admin(page)
    editor_url = await add_portal(page, "Acme Rebrand", CONTENT, status="Active")
    email = "jane@acme.example"
    await invite_client(page, editor_url, email)
    await expect(page.get_by_role("status")).to_have_text(f"Invitation sent to {email}")
    await check_accessible(page, admin=True)
    await screenshot(page, "portal-editor")

    await page.get_by_role("link", name="All Portals").click()
    await expect(page.get_by_role("link", name="Acme Rebrand")).to_be_visible()
    await check_accessible(page, admin=True)
    await screenshot(page, "all-portals")

    # The email, as a mail client would show its HTML part.
    html = await latest_html(stack.sink, email)
    link = await latest_link(stack.sink, email)
    assert link.startswith(stack.public_url + "/invitations/accept?token=")
    assert "Acme Rebrand" in html and "Accept Invitation" in html
    await screenshot_email(chromium, html, "invitation-email")

    # The client opens the link in their own browser.
    client_context = await new_context(chromium, stack)
    try:
        client = await client_context.new_page()
        await client.goto(link)
        await expect(client.get_by_role("heading", name="Accept Invitation")).to_be_visible()
        await expect(client.get_by_text("Acme Rebrand").first).to_be_visible()
        await expect(client.get_by_text(re.compile("at least 12 characters"))).to_be_visible()
        await check_accessible(client)
        await screenshot(client, "accept")

        # A mismatch is refused next to the field, announced, and nothing is consumed.
        await client.get_by_label("Password", exact=True).fill("a-long-client-password-7")
        await client.get_by_label("Confirm Password", exact=True).fill("something-else-entirely")
        await client.get_by_role("button", name="Set Password").click()
        await expect(client.get_by_role("alert")).to_have_text("The passwords do not match.")
        await check_accessible(client)

        await set_password(client)
        await expect(client).to_have_url(re.compile(r"/client-portal/acme-rebrand[a-z0-9-]*/$"))
        await expect(client.get_by_role("heading", name="Acme Rebrand")).to_be_visible()
        await expect(client.locator(".portal-content strong")).to_have_text("your")
        await expect(client.get_by_role("link", name="Project timeline")).to_be_visible()
        await check_accessible(client)
        await screenshot(client, "portal")
    finally:
        await client_context.close()


async def test_accept_page_on_a_phone(page: Page, chromium: Browser, stack: Stack) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Northwind Launch", "Launch plan.")
    email = "sam@northwind.example"
    await invite_client(page, editor_url, email)
    link = await latest_link(stack.sink, email)

    phone = await new_context(chromium, stack, viewport=PHONE)
    try:
        client = await phone.new_page()
        await client.goto(link)
        await expect(client.get_by_role("button", name="Set Password")).to_be_visible()
        # Nothing wider than the screen: no sideways scrolling on a phone.
        width = await client.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], width
        await screenshot(client, "accept-phone")
    finally:
        await phone.close()


async def test_a_client_with_an_account_is_told_to_log_in_and_lands_on_the_new_portal(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    """The email to a person who already had an account said "Click the button below to
    set your password. Your account is created for you"; its link then asked them to log
    in. It says what the link does."""
    await log_in_admin(page)
    first = await add_portal(page, "Harbor First", "The first project.")
    email = "lee@harbor.example"
    async with client_of(chromium, stack, page, first, email):
        pass
    second = await add_portal(page, "Harbor Second", "The second project.")
    await invite_client(page, second, email)
    html = await latest_html(stack.sink, email, count=2)
    link = await latest_link(stack.sink, email, count=2)

    context = await new_context(chromium, stack)
    try:
        mail = await context.new_page()
        await mail.set_content(html)
        await expect(mail.get_by_text("log in with your account")).to_be_visible()
        await expect(mail.get_by_text("set your password")).to_have_count(0)
        await expect(mail.get_by_role("link", name="Accept Invitation")).to_be_visible()

        client = await context.new_page()
        await client.goto(link)
        await expect(
            client.get_by_role("heading", name=re.compile("log in to accept"))
        ).to_be_visible()
        await expect(client.get_by_role("button", name="Set Password")).to_have_count(0)
        await check_accessible(client)
        await client.get_by_label("Password", exact=True).fill(CLIENT_PASSWORD)
        await client.get_by_role("button", name="Log In").click()
        await expect(client).to_have_url(re.compile(r"/client-portal/harbor-second[a-z0-9-]*/$"))
        await expect(client.get_by_role("heading", name="Harbor Second")).to_be_visible()
    finally:
        await context.close()
