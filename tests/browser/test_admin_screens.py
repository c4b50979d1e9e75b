"""Issue 6, tests 2-5 in a real browser: Resend and Revoke, Client and Sub-Clients,
Login Redirect and Forgot password?, and a Pending portal."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from tests.browser.conftest import new_context
from tests.browser.pages import (
    CLIENT_PASSWORD,
    add_portal,
    check_accessible,
    client_of,
    invite_client,
    latest_link,
    log_in,
    log_in_admin,
    screenshot,
    screenshot_email,
    set_password,
)
from tests.support.smtp import html_part
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


async def test_resend_and_revoke_from_the_invitations_screen(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Globex Website", "Site map and copy deck.")
    resent, revoked = "hank@globex.example", "marge@globex.example"
    await invite_client(page, editor_url, resent)
    await invite_client(page, editor_url, revoked)
    old_link = await latest_link(stack.sink, resent)
    revoked_link = await latest_link(stack.sink, revoked)

    await page.get_by_role("link", name="Invitations").click()
    await expect(page.get_by_role("heading", name="Invitations")).to_be_visible()
    await check_accessible(page, admin=True)
    await screenshot(page, "invitations")

    row = page.get_by_role("row").filter(has_text=resent)
    await row.get_by_role("button", name="Resend").click()
    await expect(page.get_by_role("status")).to_have_text(f"Invitation resent to {resent}")
    new_link = await latest_link(stack.sink, resent, count=2)
    assert new_link != old_link

    # Revoke asks first; saying no changes nothing.
    questions: list[str] = []

    async def answer(dialog: Dialog) -> None:
        questions.append(dialog.message)
        await (dialog.accept() if len(questions) > 1 else dialog.dismiss())

    page.on("dialog", answer)
    row = page.get_by_role("row").filter(has_text=revoked)
    await row.get_by_role("button", name="Revoke").click()
    await expect(row.get_by_text("Pending", exact=True)).to_be_visible()
    assert len(questions) == 1 and revoked in questions[0]
    await row.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status")).to_have_text(f"Invitation to {revoked} revoked.")
    assert len(questions) == 2
    # The screen lists pending invitations; the revoked one is under its own filter.
    await expect(page.get_by_role("row").filter(has_text=revoked)).to_have_count(0)
    await (
        page.get_by_role("navigation", name="Status")
        .get_by_role("link", name=re.compile(r"^Revoked \(\d+\)$"))
        .click()
    )
    row = page.get_by_role("row").filter(has_text=revoked)
    await expect(row.get_by_text("Revoked", exact=True)).to_be_visible()
    await expect(row.get_by_role("button", name="Revoke")).to_have_count(0)

    client = await new_context(chromium, stack)
    try:
        visitor = await client.new_page()
        await visitor.goto(old_link)
        await expect(visitor.get_by_role("heading", level=1)).to_have_text(
            "This link was replaced by a newer one"
        )
        await expect(visitor.get_by_role("button", name="Set Password")).to_have_count(0)
        await visitor.goto(revoked_link)
        await expect(visitor.get_by_role("heading", level=1)).to_have_text(
            "This invitation has been revoked"
        )
        await expect(visitor.get_by_text("Ask the person who invited you")).to_be_visible()
        await check_accessible(visitor)
        await screenshot(visitor, "invitation-revoked")
        await visitor.goto(new_link)
        await set_password(visitor)
        await expect(visitor.get_by_role("heading", name="Globex Website")).to_be_visible()
    finally:
        await client.close()


async def test_client_and_sub_clients_share_a_portal(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    first = await add_portal(page, "Initech Intranet", "Intranet plans.")
    second = await add_portal(page, "Initech Payroll", "Payroll plans.")
    owner_email, helper_email = "peter@initech.example", "joanna@initech.example"
    async with (
        client_of(chromium, stack, page, first, owner_email) as (_, owner),
        client_of(chromium, stack, page, second, helper_email) as (_, helper),
    ):
        shared = await add_portal(page, "Initech Shared Drive", "The **shared** drive.")
        await page.get_by_label("Client", exact=True).select_option(label=owner_email)
        await page.get_by_label("Sub-Clients", exact=True).select_option(label=helper_email)
        await page.get_by_role("button", name="Save Portal").first.click()
        await expect(page.get_by_role("status")).to_have_text("Portal saved.")
        await expect(page.get_by_label("Client", exact=True)).to_have_value(re.compile(".+"))
        await expect(page.get_by_label(f"Remove {helper_email}")).to_be_visible()
        await check_accessible(page, admin=True)
        assert page.url == shared

        for person, own in ((owner, "Initech Intranet"), (helper, "Initech Payroll")):
            await person.goto("/client-portal/")
            await expect(person.get_by_role("heading", name="Your portals")).to_be_visible()
            await expect(person.get_by_role("link", name=own)).to_be_visible()
            await person.get_by_role("link", name="Initech Shared Drive").click()
            await expect(person.locator(".portal-content strong")).to_have_text("shared")
        await owner.goto("/client-portal/")
        await check_accessible(owner)
        await screenshot(owner, "portal-list")


async def test_login_redirect_and_forgot_password(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Umbrella Research", "Lab reports.")
    email = "alice@umbrella.example"
    async with client_of(chromium, stack, page, editor_url, email) as (context, client):
        await page.get_by_role("link", name="Settings").click()
        redirect = page.get_by_label("Login Redirect", exact=True)
        await expect(page.get_by_label("Invitation Link Expiry")).to_have_value("14")
        await redirect.check()
        await page.get_by_role("button", name="Save Settings").click()
        await expect(page.get_by_role("status")).to_have_text("Settings saved.")
        await expect(redirect).to_be_checked()
        await check_accessible(page, admin=True)
        await screenshot(page, "settings")

        await context.clear_cookies()
        await log_in(client, email, CLIENT_PASSWORD)
        await expect(client).to_have_url(
            re.compile(r"/client-portal/umbrella-research[a-z0-9-]*/$")
        )
        await expect(client.get_by_text("Lab reports.")).to_be_visible()

        await redirect.uncheck()
        await page.get_by_role("button", name="Save Settings").click()
        await expect(page.get_by_role("status")).to_have_text("Settings saved.")
        await expect(redirect).not_to_be_checked()
        await context.clear_cookies()
        await log_in(client, email, CLIENT_PASSWORD)
        await expect(client).to_have_url(stack.public_url + "/")
        await expect(client.get_by_role("heading", name="Welcome")).to_be_visible()

        # Forgot password? through the email.
        await context.clear_cookies()
        await client.goto("/login")
        await client.get_by_role("link", name="Forgot password?").click()
        await client.get_by_label("Email", exact=True).fill(email)
        await client.get_by_role("button", name="Send Reset Link").click()
        await expect(client.get_by_role("status")).to_contain_text("If an account exists")
        messages = await stack.sink.wait_for(email, count=2)
        reset_html = html_part(messages[-1])
        match = re.search(r'href="([^"]*/reset-password\?token=[^"]+)"', reset_html)
        assert match, reset_html
        await screenshot_email(chromium, reset_html, "reset-email")
        await client.goto(match.group(1).replace("&amp;", "&"))
        await expect(client.get_by_role("heading", name="Set a new password")).to_be_visible()
        await check_accessible(client)
        await set_password(client, "a-brand-new-password-99")
        await expect(client.get_by_role("status")).to_have_text(
            "Your password has been set. You can log in now."
        )

        await log_in(client, email, CLIENT_PASSWORD)
        await expect(client.get_by_role("alert")).to_be_visible()
        await check_accessible(client)
        await log_in(client, email, "a-brand-new-password-99")
        await expect(client.get_by_role("heading", name="Welcome")).to_be_visible()


async def test_pending_portal_shows_its_client_no_content(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Soylent Pilot", "Secret recipe.", status="Pending")
    # A Pending portal can't take invitations; the reason shows next to the field.
    await page.get_by_label("Email", exact=True).fill("sol@soylent.example")
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(page.get_by_role("alert")).to_contain_text("not Active")
    await check_accessible(page, admin=True)

    await page.get_by_label("Status", exact=True).select_option(label="Active")
    await page.get_by_role("button", name="Save Portal").first.click()
    await expect(page.get_by_role("status")).to_have_text("Portal saved.")
    async with client_of(chromium, stack, page, editor_url, "sol@soylent.example") as (_, client):
        await expect(client.get_by_text("Secret recipe.")).to_be_visible()

        await page.get_by_label("Status", exact=True).select_option(label="Pending")
        await page.get_by_role("button", name="Save Portal").first.click()
        await expect(page.get_by_role("status")).to_have_text("Portal saved.")

        await client.reload()
        await expect(client.get_by_role("heading", name="Soylent Pilot")).to_be_visible()
        await expect(client.get_by_text("isn't available")).to_be_visible()
        await expect(client.get_by_text("Secret recipe.")).to_have_count(0)
        await client.goto("/client-portal/")
        await expect(client.get_by_role("link", name="Soylent Pilot")).to_have_count(0)
        await expect(client.get_by_text("Secret recipe.")).to_have_count(0)
