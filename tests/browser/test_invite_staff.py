"""Issue 15, Invite Staff in a real browser: an Administrator opens Users, fills Invite
Staff (Email, Role) and sends it; the invited person opens the email, accepts, sets a
password and lands in the admin area, logged in, as Staff. docs/screenshots/
users-invite-staff.png is the Users screen with the pending staff invitation."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import new_context
from tests.browser.pages import (
    check_accessible,
    latest_html,
    latest_link,
    log_in_admin,
    screenshot,
    set_password,
)
from tests.support.smtp import SmtpSink
from tests.support.stack import ADMIN_EMAIL, Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


async def _subject(sink: SmtpSink, email: str) -> str:
    messages = await sink.wait_for(email)
    return str(messages[-1]["Subject"])


async def test_an_administrator_invites_staff_who_land_in_the_admin_area(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    await page.get_by_role("link", name="Users").click()
    await expect(page.get_by_role("heading", name="Invite Staff")).to_be_visible()

    # The form says what's wrong beside the field, and keeps what was typed.
    await page.get_by_label("Email", exact=True).fill("not an address")
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(page.get_by_role("alert")).to_have_text(
        "Enter a single valid email address, like name@example.com."
    )
    await check_accessible(page, admin=True)

    email = "sam@agency.example"
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Role", exact=True).select_option(label="Staff")
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(page.get_by_role("status")).to_have_text(f"Invitation sent to {email}")
    invitations = page.get_by_role("table", name="Staff invitations")
    row = invitations.get_by_role("row").filter(has_text=email)
    await expect(row.get_by_role("cell").nth(1)).to_have_text("Staff")
    await expect(row.get_by_text("Pending")).to_be_visible()
    await expect(row.get_by_role("button", name=f"Resend to {email}")).to_be_visible()
    await expect(row.get_by_role("button", name=f"Revoke invitation to {email}")).to_be_visible()
    await check_accessible(page, admin=True)
    await screenshot(page, "users-invite-staff")

    # The email says who invited, to what, as what.
    site = re.sub(r"^https?://([^:/]+).*$", r"\1", stack.public_url)
    said = f"{ADMIN_EMAIL} has invited you to join {site} as Staff"
    assert await _subject(stack.sink, email) == said
    html = await latest_html(stack.sink, email)
    assert "Accept Invitation" in html
    link = await latest_link(stack.sink, email)

    staff_context = await new_context(chromium, stack)
    try:
        staff = await staff_context.new_page()
        await staff.goto(link)
        await expect(staff.get_by_role("heading", name="Accept Invitation")).to_be_visible()
        await expect(staff.get_by_text(re.compile(r"invited to join .* as Staff"))).to_be_visible()
        await check_accessible(staff)
        await set_password(staff)
        await expect(staff).to_have_url(re.compile(r"/admin/portals$"))
        await expect(staff.get_by_role("status")).to_have_text(
            "Invitation accepted: you are Staff now."
        )
        # Logged in as Staff: the admin area, but not the Administrators' pages.
        nav = staff.get_by_role("navigation", name="Main")
        await expect(nav.get_by_role("link", name="Invitations")).to_be_visible()
        await expect(nav.get_by_role("link", name="Users")).to_have_count(0)
        await check_accessible(staff, admin=True)
    finally:
        await staff_context.close()

    # Accepted: gone from the pending list; the new account is listed with its role.
    await page.reload()
    await expect(page.get_by_role("table", name="Staff invitations")).to_have_count(0)
    await expect(page.get_by_label(f"Role of {email}", exact=True)).to_have_value("staff")
