"""Issue 20 in a real browser: Link Expiry and Personal Message reach the email (the
message escaped), several Sub-Clients in one Save Portal, and the Invitations screen's
search, status tabs and Revoke / Resend for the selected rows."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from tests.browser.pages import (
    add_portal,
    check_accessible,
    client_of,
    invite_client,
    log_in_admin,
    screenshot,
)
from tests.support.smtp import html_part, text_part
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]

NOTE = "Hi Pepper,\n<script>alert('x')</script> the floor plans are in & ready."
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; the floor plans are in &amp; ready."


async def test_link_expiry_and_personal_message_reach_the_email(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    await add_portal(page, "Stark Tower Fit-out", "Floor plans.")
    email = "pepper@stark.example"
    await expect(page.get_by_label("Link Expiry", exact=True)).to_have_value("14")  # the setting
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Link Expiry", exact=True).select_option(label="30 days")
    await page.get_by_label("Personal Message", exact=True).fill(NOTE)
    await check_accessible(page, admin=True)
    await screenshot(page, "invite-options")
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(page.get_by_role("status")).to_have_text(f"Invitation sent to {email}")

    [message] = await stack.sink.wait_for(email)
    html, text = html_part(message), text_part(message).replace("\r\n", "\n")
    assert ESCAPED in html and "<script>" not in html
    assert NOTE in text
    for part in (html.replace("<bdi>", ""), text):
        assert "A message from admin@" in part
        assert "(30 days after it was sent)" in part

    # As a mail client shows it: the message is text on the page, and nothing ran.
    viewer = await chromium.new_context(viewport={"width": 800, "height": 900})
    try:
        shown = await viewer.new_page()
        dialogs: list[str] = []

        async def noted(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            await dialog.dismiss()

        shown.on("dialog", noted)
        await shown.set_content(html)
        await expect(shown.locator("blockquote")).to_contain_text(
            "<script>alert('x')</script> the floor plans are in & ready."
        )
        await expect(shown.get_by_text("30 days after it was sent")).to_be_visible()
        await screenshot(shown, "invitation-email-message")
        assert dialogs == []
    finally:
        await viewer.close()

    # The list shows the chosen expiry; a Resend keeps it and the message.
    await page.get_by_role("link", name="Invitations").click()
    row = page.get_by_role("row").filter(has_text=email)
    await expect(row.get_by_role("cell", name="30 days", exact=True)).to_be_visible()
    await row.get_by_role("button", name="Resend").click()
    await expect(page.get_by_role("status")).to_have_text(f"Invitation resent to {email}")
    again = (await stack.sink.wait_for(email, count=2))[-1]
    assert ESCAPED in html_part(again) and NOTE in text_part(again).replace("\r\n", "\n")
    assert "(30 days after it was sent)" in text_part(again)


async def test_sub_clients_two_users_then_one_save_portal(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    first = await add_portal(page, "Wayne Archive", "Archive plans.")
    second = await add_portal(page, "Wayne Labs", "Lab plans.")
    lucius, alfred = "lucius@wayne.example", "alfred@wayne.example"
    async with (
        client_of(chromium, stack, page, first, lucius) as (_, lucius_page),
        client_of(chromium, stack, page, second, alfred) as (_, alfred_page),
    ):
        shared = await add_portal(page, "Wayne Shared Vault", "The **shared** vault.")
        await page.get_by_label("Sub-Clients", exact=True).select_option(label=[lucius, alfred])
        await page.get_by_role("button", name="Save Portal").first.click()
        await expect(page.get_by_role("status")).to_have_text("Portal saved.")
        await expect(page.get_by_label(f"Remove {lucius}")).to_be_visible()
        await expect(page.get_by_label(f"Remove {alfred}")).to_be_visible()
        await check_accessible(page, admin=True)
        await screenshot(page, "sub-clients")
        assert page.url == shared
        for person in (lucius_page, alfred_page):
            await person.goto("/client-portal/")
            await person.get_by_role("link", name="Wayne Shared Vault").click()
            await expect(person.locator(".portal-content strong")).to_have_text("shared")


async def test_invitations_search_tabs_and_bulk_revoke(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Oscorp Labs", "Lab notes.")
    ann, bob, cid = "ann@oscorp.example", "bob@oscorp.example", "cid@oscorp.example"
    for email in (ann, bob, cid):
        await invite_client(page, editor_url, email)

    await page.get_by_role("link", name="Invitations").click()
    await page.get_by_label("Portal", exact=True).select_option(label="Oscorp Labs")
    await page.get_by_role("button", name="Search").click()
    tabs = page.get_by_role("navigation", name="Status")
    await expect(tabs.get_by_role("link", name="Pending (3)")).to_have_attribute(
        "aria-current", "page"
    )
    await expect(tabs.get_by_role("link", name="All (3)")).to_be_visible()
    await expect(tabs.get_by_role("link", name="Revoked (0)")).to_be_visible()

    # Select two rows → Revoke (asked first) → both revoked, the third untouched.
    questions: list[str] = []

    async def answer(dialog: Dialog) -> None:
        questions.append(dialog.message)
        await dialog.accept()

    page.on("dialog", answer)
    await page.get_by_label(f"Select {ann}").check()
    await page.get_by_label(f"Select {bob}").check()
    selected = page.get_by_role("form", name="Selected invitations")
    await selected.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status")).to_have_text("2 revoked")
    assert len(questions) == 1 and "selected invitations" in questions[0]
    await expect(tabs.get_by_role("link", name="Pending (1)")).to_be_visible()
    await expect(tabs.get_by_role("link", name="Revoked (2)")).to_be_visible()
    await expect(page.get_by_role("row").filter(has_text=cid)).to_have_count(1)
    await expect(page.get_by_role("row").filter(has_text=ann)).to_have_count(0)
    await check_accessible(page, admin=True)
    await screenshot(page, "invitations-tabs")

    # Search by email (any case), under All: one person's invitation.
    await tabs.get_by_role("link", name="All (3)").click()
    await page.get_by_label("Search by email", exact=True).fill(ann.upper())
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_role("row").filter(has_text=ann)).to_have_count(1)
    await expect(page.get_by_role("row").filter(has_text=bob)).to_have_count(0)
    await expect(tabs.get_by_role("link", name="All (1)")).to_have_attribute("aria-current", "page")
    await expect(tabs.get_by_role("link", name="Revoked (1)")).to_be_visible()

    # Resend for a selection that holds a revoked one: the others go, that one is named.
    await page.get_by_label("Search by email", exact=True).fill("")
    await page.get_by_role("button", name="Search").click()
    await page.get_by_label(f"Select {ann}").check()
    await page.get_by_label(f"Select {cid}").check()
    await expect(page.get_by_label(f"Select {bob}")).not_to_be_checked()
    await selected.get_by_role("button", name="Resend").click()
    await expect(page.get_by_role("status")).to_have_text(
        f"1 resent; 1 could not be resent: revoked ({ann})"
    )
    assert len(questions) == 1  # Resend asks nothing
    await stack.sink.wait_for(cid, count=2)
    assert len(stack.sink.to(ann)) == 1

    # Select all ticks every row of the page (and untick them again).
    await page.get_by_label("Select all", exact=True).check()
    for email in (ann, bob, cid):
        await expect(page.get_by_label(f"Select {email}")).to_be_checked()
    await page.get_by_label("Select all", exact=True).uncheck()
    await expect(page.get_by_label(f"Select {bob}")).not_to_be_checked()
