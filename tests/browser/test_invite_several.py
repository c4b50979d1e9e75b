"""Issue 20 in a real browser: on All Portals, tick portals → Invite Client → Send
Invitation invites one person to all of them with one email; a portal archived before
they accept blocks nothing: Accept Invitation, Set Password, and they land on the list
of the portals still Active."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import new_context
from tests.browser.pages import (
    add_portal,
    check_accessible,
    latest_html,
    latest_link,
    log_in_admin,
    screenshot,
    screenshot_email,
    set_password,
)
from tests.support.smtp import text_part
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


async def test_tick_portals_then_invite_client(page: Page, chromium: Browser, stack: Stack) -> None:
    await log_in_admin(page)
    titles = ["Wayne Manor Refit", "Wayne Tower Lobby", "Gotham Gala 2026"]
    editors = [await add_portal(page, title, f"About {title}.") for title in titles]

    # Nothing ticked: the list says what to do.
    await page.goto("/admin/portals")
    await page.get_by_role("button", name="Invite Client").click()
    await expect(page.get_by_role("status")).to_have_text(
        "Tick at least one portal first, then Invite Client."
    )

    await page.reload()
    for title in titles:
        await page.get_by_label(f"Select {title}", exact=True).check()
    await check_accessible(page, admin=True)
    await screenshot(page, "all-portals-ticked")
    await page.get_by_role("button", name="Invite Client").click()

    await expect(page.get_by_role("heading", name="Invite Client")).to_be_visible()
    for title in titles:
        await expect(page.get_by_role("listitem").filter(has_text=title)).to_be_visible()
    email = f"alfred-{uuid.uuid4().hex[:6]}@wayne.example"
    await expect(page.get_by_label("Link Expiry", exact=True)).to_have_value("14")  # the setting
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Name", exact=True).fill("Alfred")
    await page.get_by_label("Link Expiry", exact=True).select_option(label="21 days")
    await page.get_by_label("Personal Message", exact=True).fill("All three, one login.")
    await check_accessible(page, admin=True)
    await screenshot(page, "invite-several-portals")
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(page.get_by_role("status")).to_have_text(
        f"Invitation sent to {email}: one email for the portals you ticked."
    )

    # One email naming the three; each portal's Invitations screen has its own row.
    html = await latest_html(stack.sink, email)
    [message] = await stack.sink.wait_for(email)
    for title in titles:
        assert title in text_part(message)
    assert "Hi Alfred," in text_part(message)
    await screenshot_email(chromium, html, "invitation-email-several")
    await page.get_by_role("link", name="Invitations").click()
    for title in titles:
        row = page.get_by_role("row").filter(has_text=email).filter(has_text=title)
        await expect(row.get_by_role("cell", name="21 days", exact=True)).to_be_visible()

    # The Gala is archived before Alfred accepts: the other two open.
    await page.goto(editors[2])
    await page.get_by_label("Status", exact=True).select_option(label="Archived")
    await page.get_by_role("button", name="Save Portal").first.click()
    await expect(page.get_by_role("status")).to_have_text("Portal saved.")

    link = await latest_link(stack.sink, email)
    context = await new_context(chromium, stack)
    try:
        client = await context.new_page()
        await client.goto(link)
        for title in titles[:2]:
            await expect(client.get_by_role("listitem").filter(has_text=title)).to_be_visible()
        await expect(client.get_by_text(titles[2])).to_have_count(0)
        await set_password(client)
        await expect(client).to_have_url(re.compile(r"/client-portal/$"))
        await expect(client.get_by_role("heading", name="Your portals")).to_be_visible()
        for title in titles[:2]:
            await expect(client.get_by_role("link", name=title)).to_be_visible()
        await expect(client.get_by_role("link", name=titles[2])).to_have_count(0)
    finally:
        await context.close()

    # On the Invitations screen: two accepted, the Gala's still pending (its portal isn't
    # Active, so nothing was granted).
    await page.goto("/admin/invitations?status=all")
    for title, status in zip(titles, ("Accepted", "Accepted", "Pending"), strict=True):
        row = page.get_by_role("row").filter(has_text=email).filter(has_text=title)
        await expect(row.get_by_text(status, exact=True)).to_be_visible()


async def test_a_refused_character_is_shown_beside_the_field_that_holds_it(
    page: Page, stack: Stack
) -> None:
    """invitations names the field it refused (``details.field``); the page puts the
    message beside that field, the Name's or the Personal Message's."""
    await log_in_admin(page)
    title = f"Kent Farm {uuid.uuid4().hex[:4]}"
    await add_portal(page, title, "About the farm.")
    await page.goto("/admin/portals")
    await page.get_by_label(f"Select {title}", exact=True).check()
    await page.get_by_role("button", name="Invite Client").click()
    await page.get_by_label("Email", exact=True).fill(f"clark-{uuid.uuid4().hex[:6]}@kent.example")
    await page.get_by_label("Name", exact=True).fill("Clark \u202eKent")
    await page.get_by_label("Personal Message", exact=True).fill("See you Sunday.")
    await page.get_by_role("button", name="Send Invitation").click()
    name, message = page.get_by_label("Name", exact=True), page.get_by_label("Personal Message")
    await expect(name).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#invite_name-error")).to_contain_text(
        "changes the order the text is shown in"
    )
    await expect(message).not_to_have_attribute("aria-invalid", "true")

    await name.fill("Clark Kent")
    await message.fill("Pay to \u202e4321 NABI\nThanks")
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(message).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#invite_message-error")).to_contain_text(
        "changes the order the text is shown in"
    )
    await expect(name).not_to_have_attribute("aria-invalid", "true")
