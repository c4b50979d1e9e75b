"""Issue 20 in a real browser: a link replaced by a Resend says so; Email me a new link
sends a fresh one to the invited address, which accepts; the Invitations screen shows it
was sent at the client's request; Settings has Invitation Reminder."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import new_context
from tests.browser.pages import (
    add_portal,
    check_accessible,
    invite_client,
    latest_link,
    log_in_admin,
    screenshot,
    set_password,
)
from tests.support.smtp import accept_link
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


async def test_a_replaced_link_gets_a_new_one_that_accepts(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Hooli Nucleus", "Compression benchmarks.")
    email = "gavin@hooli.example"
    await invite_client(page, editor_url, email)
    first_link = await latest_link(stack.sink, email)

    # Staff resend it: the first link is replaced by the second email's.
    await page.get_by_role("link", name="Invitations").click()
    row = page.get_by_role("row").filter(has_text=email)
    await row.get_by_role("button", name="Resend").click()
    await expect(page.get_by_role("status")).to_have_text(f"Invitation resent to {email}")
    await latest_link(stack.sink, email, count=2)

    client_context = await new_context(chromium, stack)
    try:
        client = await client_context.new_page()
        await client.goto(first_link)  # the link from the first email
        await expect(client.get_by_role("heading", level=1)).to_have_text(
            "This link was replaced by a newer one"
        )
        await expect(
            client.get_by_text("use the latest email we sent you", exact=False)
        ).to_be_visible()
        await expect(client.get_by_text("copied the whole link")).to_have_count(0)
        await expect(client.get_by_role("button", name="Set Password")).to_have_count(0)
        await check_accessible(client)
        await screenshot(client, "invitation-replaced")

        await client.get_by_role("button", name="Email me a new link").click()
        await expect(client.get_by_role("heading", level=1)).to_have_text("Check your email")
        await expect(client.get_by_role("status")).to_contain_text(
            "a new link is on its way to the address it was sent to"
        )
        # The answer to the button is where the focus is, read out as the page opens.
        await expect(client.get_by_role("status")).to_be_focused()
        await check_accessible(client)
        await screenshot(client, "new-link-requested")

        # The third email, to the invited address, with a link that works.
        messages = await stack.sink.wait_for(email, count=3)
        new_link = accept_link(messages[-1])
        assert new_link != first_link
        await client.goto(new_link)
        await expect(client.get_by_role("heading", name="Accept Invitation")).to_be_visible()
        await set_password(client)
        await expect(client).to_have_url(re.compile(r"/client-portal/hooli-nucleus[a-z0-9-]*/$"))
        await expect(client.get_by_role("heading", name="Hooli Nucleus")).to_be_visible()
    finally:
        await client_context.close()

    # The Invitations screen shows why the last email went.
    await (
        page.get_by_role("navigation", name="Status")
        .get_by_role("link", name=re.compile(r"^All \(\d+\)$"))
        .click()
    )
    row = page.get_by_role("row").filter(has_text=email)
    await expect(row.get_by_text("Sent again at the client's request")).to_be_visible()
    await expect(row.get_by_text("Accepted", exact=True)).to_be_visible()
    await check_accessible(page, admin=True)


async def test_invitation_reminder_setting(page: Page, stack: Stack) -> None:
    await log_in_admin(page)
    await page.get_by_role("link", name="Settings").click()
    reminder = page.get_by_label("Invitation Reminder", exact=True)
    await expect(reminder).to_have_value("0")  # Off by default
    try:
        await reminder.select_option(label="1 day before expiry")
        await page.get_by_role("button", name="Save Settings").click()
        await expect(page.get_by_role("status")).to_have_text("Settings saved.")
        await expect(reminder).to_have_value("1")
        await expect(page.get_by_label("Invitation Link Expiry")).to_have_value("14")
        await check_accessible(page, admin=True)
    finally:
        await reminder.select_option(label="Off")
        await page.get_by_role("button", name="Save Settings").click()
        await expect(page.get_by_role("status")).to_have_text("Settings saved.")
    await expect(reminder).to_have_value("0")
