"""The accessibility check every browser test runs (pages.check_accessible): axe-core finds
and names what breaks WCAG 2.1 A and AA, an id used twice is refused; the pages only these
tests visit (the API reference, a visitor's pages in German with their errors); and the
keyboard-only journey through Invite Client and Accept Invitation, where the focus goes
after a form answers."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.axe import axe_violations, describe
from tests.browser.conftest import new_context
from tests.browser.pages import (
    CLIENT_PASSWORD,
    add_portal,
    check_accessible,
    latest_link,
    log_in_admin,
)
from tests.support.stack import Stack

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


async def test_check_accessible_refuses_an_id_used_twice(chromium: Browser) -> None:
    page = await chromium.new_page()
    try:
        await page.set_content(
            '<!doctype html><html lang="en"><head><title>twice</title></head><body>'
            '<header>ClientPress</header><main><h1>Twice</h1><p id="note">one</p>'
            '<p id="note">two</p></main></body></html>'
        )
        with pytest.raises(AssertionError, match=r"ids used more than once on .*: \['note'\]"):
            await check_accessible(page)
    finally:
        await page.close()


async def test_the_api_reference_is_accessible(page: Page) -> None:
    # Its schemas are wide <pre> blocks that scroll sideways: each must take the keyboard's
    # focus, or what is past the right edge can't be read without a mouse.
    await page.goto("/api/docs")
    await expect(page.get_by_role("heading", name="Schemas")).to_be_visible()
    await check_accessible(page)


FOCUSED = """() => {
    const e = document.activeElement;
    if (!e || e === document.body) return null;
    const style = getComputedStyle(e);
    return {
        what: e.id ? "#" + e.id : (e.innerText || e.getAttribute("aria-label") || e.tagName).trim(),
        ring: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
    };
}"""


async def tab_to(page: Page, what: str, limit: int = 40) -> list[str]:
    """Tab until ``what`` (an #id or a control's words) has the focus; every stop on the way
    must show where the focus is. Returns the stops, in order."""
    stops: list[str] = []
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(FOCUSED)
        assert focused, f"the focus left the page after {stops}"
        assert focused["ring"], f"no visible focus on {focused['what']} (after {stops})"
        stops.append(focused["what"])
        if focused["what"] == what:
            return stops
    raise AssertionError(f"{what} not reached in {limit} Tabs: {stops}")


async def test_keyboard_only_through_invite_client_and_accept_invitation(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    editor_url = await add_portal(page, "Keyboard Only", "Hello.", status="Active")
    await page.goto(editor_url)

    # The page's order: the header, the portal's fields and its Save, then Invite Client.
    stops = await tab_to(page, "#invite_email")
    assert stops[0] == "Skip to content"
    order = ["#title", "#content", "#status", "Save Portal", "#invite_email"]
    assert [stop for stop in stops if stop in order] == order, stops
    await page.keyboard.type("not-an-email")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_be_visible()
    # Sent back with an error, the focus is on the field to correct, not at the page's top.
    await expect(page.locator("#invite_email")).to_be_focused()
    await check_accessible(page, admin=True)

    email = "keyboard@acme.example"
    await page.keyboard.press("ControlOrMeta+a")
    await page.keyboard.type(email)
    await tab_to(page, "Send Invitation")
    await page.keyboard.press("Space")
    status = page.get_by_role("status")
    await expect(status).to_have_text(f"Invitation sent to {email}")
    # The result is where the focus is: read out at once, the next Tab goes on from there.
    await expect(status).to_be_focused()

    link = await latest_link(stack.sink, email)
    context = await new_context(chromium, stack)
    try:
        client = await context.new_page()
        await client.goto(link)
        stops = await tab_to(client, "#password")
        assert stops[0] == "Skip to content"
        await client.keyboard.type(CLIENT_PASSWORD)
        await tab_to(client, "#confirm", limit=1)
        await client.keyboard.type("not-the-same-password")
        await client.keyboard.press("Enter")
        await expect(client.get_by_role("alert")).to_have_text("The passwords do not match.")
        await expect(client.locator("#confirm")).to_be_focused()
        await check_accessible(client)

        await client.keyboard.press("Shift+Tab")
        await expect(client.locator("#password")).to_be_focused()
        await client.keyboard.type(CLIENT_PASSWORD)
        await client.keyboard.press("Tab")
        await client.keyboard.type(CLIENT_PASSWORD)
        await tab_to(client, "Set Password", limit=1)
        await client.keyboard.press("Enter")
        await expect(client).to_have_url(re.compile(r"/client-portal/keyboard-only/$"))
        await expect(client.get_by_text("Hello.")).to_be_visible()
    finally:
        await context.close()


async def test_a_visitors_pages_in_german_with_their_errors(
    chromium: Browser, stack: Stack
) -> None:
    context = await new_context(chromium, stack, locale="de-DE")
    try:
        page = await context.new_page()
        await page.goto("/login")
        await expect(page.locator("html")).to_have_attribute("lang", "de")
        await check_accessible(page)
        await page.locator("#email").fill("nobody@acme.example")
        await page.locator("#password").fill("not-the-password-1")
        await page.locator("#password").press("Enter")
        await expect(page.get_by_role("alert")).to_be_visible()
        await expect(page.locator("#email")).to_be_focused()
        await check_accessible(page)

        await page.goto("/forgot-password")
        await page.locator("#email").fill("not an address")
        await page.locator("#email").press("Enter")
        await expect(page.get_by_role("alert")).to_be_visible()
        await expect(page.locator("#email")).to_be_focused()
        await check_accessible(page)

        for path in ("/reset-password?token=unknown", "/invitations/accept?token=x", "/nowhere"):
            await page.goto(path)
            await expect(page.locator("html")).to_have_attribute("lang", "de")
            await check_accessible(page)
    finally:
        await context.close()
