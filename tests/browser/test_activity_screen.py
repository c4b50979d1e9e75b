"""The Activity screen in a real browser, by its labels: what the administrator and a key
did, newest first, filtered by Actor, Action and Portal, with a Next page; and the
Invitations screen's Invited By column."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.browser.pages import (
    add_portal,
    check_accessible,
    invite_client,
    log_in_admin,
    screenshot,
)
from tests.support.stack import ADMIN_EMAIL, API_KEY, Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]

PAGE_ROWS = 50


async def _api_portal_with_many_changes(stack: Stack, title: str, changes: int) -> str:
    """A portal made with the bootstrap key, renamed ``changes`` times: one entry each."""
    base = stack.public_url + "/api/v1"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as api:
        async with api.post(base + "/portals", json={"title": title, "status": "active"}) as r:
            assert r.status == 201, await r.text()
            portal_id = str((await r.json())["id"])
        for n in range(1, changes + 1):
            renamed = {"title": f"{title} v{n}"}
            async with api.patch(base + f"/portals/{portal_id}", json=renamed) as r:
                assert r.status == 200, await r.text()
    return portal_id


async def _until_recorded(stack: Stack, query: str, count: int) -> None:
    """The log is built from the bus: ask /api/v1/activity until it holds ``count``
    entries matching ``query``."""
    url = f"{stack.public_url}/api/v1/activity?limit=200&{query}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as api:
        for _ in range(150):
            async with api.get(url) as r:
                assert r.status == 200, await r.text()
                if len((await r.json())["items"]) >= count:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} Activity entries for {query}")


async def test_activity_screen(page: Page, stack: Stack) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Umbrella Annual Report", "Drafts and sign-off.")
    # An address of its own: other browser tests share this stack and its mailbox.
    invitee = f"alice-{uuid.uuid4().hex[:6]}@umbrella.example"
    await invite_client(page, editor_url, invitee)

    # Invitations: who invited each one; a Resend.
    await page.get_by_role("link", name="Invitations").click()
    table = page.get_by_role("table")
    await expect(table.get_by_role("columnheader", name="Invited By")).to_be_visible()
    row = table.get_by_role("row").filter(has_text=invitee)
    await expect(row.get_by_role("cell", name=ADMIN_EMAIL, exact=True)).to_be_visible()
    await row.get_by_role("button", name="Resend").click()
    await expect(page.get_by_role("status")).to_have_text(f"Invitation resent to {invitee}")

    # A setting changed (the stack is shared: put back at the end).
    await page.get_by_role("link", name="Settings").click()
    await page.get_by_label("Invitation Link Expiry", exact=True).select_option(label="21 days")
    await page.get_by_role("button", name="Save Settings").click()
    await expect(page.get_by_role("status")).to_have_text("Settings saved.")
    try:
        await _the_screen(page, stack, invitee)
    finally:
        await _put_back_expiry(stack)


async def _the_screen(page: Page, stack: Stack, invitee: str) -> None:
    portal_title = "Stark Rebrand"
    portal_id = await _api_portal_with_many_changes(stack, portal_title, PAGE_ROWS)
    await _until_recorded(stack, f"portal_id={portal_id}", PAGE_ROWS + 1)
    await _until_recorded(stack, "action=settings.changed", 1)
    await _until_recorded(stack, "action=invitation.resent", 1)

    await page.get_by_role("link", name="Activity").click()
    await expect(page.get_by_role("heading", name="Activity", exact=True)).to_be_visible()
    await check_accessible(page, admin=True)

    # Newest first: the key's last rename heads the list.
    first = page.get_by_role("row").nth(1)
    # Its Object (the title it was given) and its Portal (the title now): both v50.
    latest = first.get_by_role("cell", name=f"{portal_title} v{PAGE_ROWS}", exact=True)
    await expect(latest).to_have_count(2)
    await expect(first.get_by_role("cell", name="Portal updated")).to_be_visible()
    await expect(first.get_by_role("cell", name="bootstrap (key)")).to_be_visible()

    # Actor: what the administrator did, newest first, and nothing the key did.
    await page.get_by_label("Actor", exact=True).select_option(label=ADMIN_EMAIL)
    await page.get_by_role("button", name="Filter").click()
    body = page.get_by_role("table").locator("tbody")
    actions = body.get_by_role("row").locator("td:nth-child(3)")
    done = ["Settings changed", "Invitation resent", "Invitation sent", "Portal created"]
    for n, action in enumerate(done):  # (the administrator may have done more before)
        await expect(actions.nth(n)).to_have_text(action)
    changed = body.get_by_role("row").filter(has_text="Settings changed")
    await expect(
        changed.get_by_role("cell", name="Invitation Link Expiry: 21 days (was 14 days)")
    ).to_be_visible()
    await expect(page.get_by_role("cell", name="bootstrap (key)")).to_have_count(0)
    await screenshot(page, "activity")

    # Action: only invitations sent.
    await page.get_by_role("link", name="Clear").click()
    await page.get_by_label("Action", exact=True).select_option(label="Invitation sent")
    await page.get_by_role("button", name="Filter").click()
    sent = body.get_by_role("row").filter(has_text=invitee)
    await expect(sent.get_by_role("cell", name=ADMIN_EMAIL, exact=True)).to_be_visible()
    await expect(sent.get_by_role("cell", name="Umbrella Annual Report")).to_be_visible()
    await expect(page.get_by_role("cell", name="Portal updated")).to_have_count(0)
    await expect(page.get_by_role("cell", name="Invitation resent")).to_have_count(0)

    # Portal: the key's portal alone, 51 entries (created, 50 renames): a Next page.
    await page.get_by_role("link", name="Clear").click()
    await page.get_by_label("Portal", exact=True).select_option(label=f"{portal_title} v50")
    await page.get_by_role("button", name="Filter").click()
    await expect(body.get_by_role("row")).to_have_count(PAGE_ROWS)
    await expect(page.get_by_role("cell", name=invitee)).to_have_count(0)
    await page.get_by_role("link", name="Next page").click()
    await expect(body.get_by_role("row")).to_have_count(1)
    await expect(body.get_by_role("cell", name="Portal created")).to_be_visible()
    await expect(body.get_by_role("cell", name=portal_title, exact=True)).to_be_visible()
    await expect(page.get_by_role("link", name="Next page")).to_have_count(0)


async def _put_back_expiry(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        aiohttp.ClientSession(headers=headers) as api,
        api.put(
            stack.public_url + "/api/v1/settings/access", json={"invitation_expiry_days": 14}
        ) as r,
    ):
        assert r.status == 200, await r.text()
