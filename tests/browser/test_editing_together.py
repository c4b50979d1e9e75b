"""Two administrators in one portal editor, in Chromium: a Save keeps what the other saved
meanwhile, and a field both changed is told beside it, with what was typed kept."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.browser.conftest import new_context
from tests.browser.pages import add_portal, check_accessible, log_in_admin
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


async def test_two_editors_keep_each_others_changes_and_are_told_of_a_clash(
    chromium: Browser, stack: Stack
) -> None:
    mine_ctx, theirs_ctx = await new_context(chromium, stack), await new_context(chromium, stack)
    try:
        mine, theirs = await mine_ctx.new_page(), await theirs_ctx.new_page()
        await log_in_admin(mine)
        await log_in_admin(theirs)
        # Multi-line Content: the browser sends its line breaks as CRLF.
        url = await add_portal(mine, "Harbour Studio", "Welcome.\n\nYour files are below.")
        await theirs.goto(url)

        # They rename it; I, with the editor open from before, change only the Content.
        await theirs.get_by_label("Title", exact=True).fill("Harbour Studio Ltd")
        await theirs.get_by_role("button", name="Save Portal").first.click()
        await expect(theirs.get_by_role("status")).to_have_text("Portal saved.")
        await mine.get_by_label("Content", exact=True).fill("Welcome back.\n\nYour files.")
        await mine.get_by_role("button", name="Save Portal").first.click()
        await expect(mine.get_by_role("status")).to_have_text("Portal saved.")
        await expect(mine.get_by_label("Title", exact=True)).to_have_value("Harbour Studio Ltd")
        await expect(mine.get_by_label("Content", exact=True)).to_have_value(
            "Welcome back.\n\nYour files."
        )

        # Both change the Status: mine is refused beside the field, what I chose kept.
        await theirs.reload()
        await theirs.get_by_label("Status", exact=True).select_option(label="Archived")
        await theirs.get_by_role("button", name="Save Portal").first.click()
        await expect(theirs.get_by_role("status")).to_have_text("Portal saved.")
        await mine.get_by_label("Status", exact=True).select_option(label="Pending")
        await mine.get_by_role("button", name="Save Portal").first.click()
        await expect(mine.locator("#status-error")).to_have_text(
            "Someone else changed the Status to “Archived” while you were editing."
            " Save Portal again to replace it with yours."
        )
        await expect(mine.get_by_label("Status", exact=True)).to_have_value("pending")
        await check_accessible(mine, admin=True)
        # Saving again, having been told, replaces it.
        await mine.get_by_role("button", name="Save Portal").first.click()
        await expect(mine.get_by_role("status")).to_have_text("Portal saved.")
        await expect(mine.get_by_label("Status", exact=True)).to_have_value("pending")
    finally:
        await mine_ctx.close()
        await theirs_ctx.close()
