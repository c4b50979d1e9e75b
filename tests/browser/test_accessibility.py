"""The accessibility check every browser test runs (pages.check_accessible): axe-core finds
and names what breaks WCAG 2.1 A and AA; and the keyboard-only journey through Invite Client
and Accept Invitation, where focus goes after a form answers."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.axe import axe_violations, describe
from tests.browser.pages import check_accessible

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]

BROKEN = """<!doctype html><html><head><title>broken</title></head><body><main>
<img src="plan.png"><p style="color:#bbb;background:#fff">faint words</p>
<label>Email</label><input id="email"></main></body></html>"""


async def test_axe_finds_and_names_what_breaks_wcag(chromium: Browser) -> None:
    page = await chromium.new_page()
    try:
        await page.set_content(BROKEN)
        violations = await axe_violations(page)
    finally:
        await page.close()
    found = {v["id"] for v in violations}
    assert {"html-has-lang", "image-alt", "color-contrast", "label"} <= found, found
    report = describe(violations)
    assert "image-alt (critical): Images must have alternative text" in report
    assert "\n  img: " in report and "\n  #email: " in report


async def test_the_api_reference_is_accessible(page: Page) -> None:
    # Its schemas are wide <pre> blocks that scroll sideways: each must take the keyboard's
    # focus, or what is past the right edge can't be read without a mouse.
    await page.goto("/api/docs")
    await expect(page.get_by_role("heading", name="Schemas")).to_be_visible()
    await check_accessible(page)
