"""Settings → Branding in a real browser, by its labels: a colour white text can't be read
on is refused with the reason; the Agency Name, Accent Colour, Footer Text and an uploaded
logo then show in the header and footer of every page (through the strict CSP) and in
the invitation email."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from PIL import Image
from playwright.async_api import Page, expect

from tests.browser.pages import (
    add_portal,
    check_accessible,
    invite_client,
    latest_html,
    log_in_admin,
    screenshot,
)
from tests.support.stack import API_KEY, Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]

AGENCY = "Northwind Studio"
FOOTER = "Northwind Studio · 1 Harbour Street · hello@northwind.example"


def logo_png() -> bytes:
    image = Image.new("RGB", (180, 48), (26, 95, 180))
    for x in range(20, 160):
        for y in range(18, 30):
            image.putpixel((x, y), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
async def built_in_branding_after(stack: Stack) -> AsyncIterator[None]:
    yield
    # The folder's other tests share this stack: give them the built-in look back.
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        empty = dict.fromkeys(("agency_name", "accent_colour", "reply_to", "footer_text"), "")
        async with session.put(f"{stack.public_url}/api/v1/settings/branding", json=empty) as r:
            assert r.status == 200, await r.text()
        async with session.delete(f"{stack.public_url}/api/v1/settings/branding/logo") as r:
            assert r.status == 200, await r.text()


async def test_branding_screen(page: Page, stack: Stack, built_in_branding_after: None) -> None:
    await log_in_admin(page)
    await page.get_by_role("link", name="Settings").click()
    await page.get_by_role("link", name="Branding").click()
    await expect(page.get_by_role("heading", name="Branding", exact=True)).to_be_visible()
    await check_accessible(page, admin=True)

    # White text on yellow can't be read: refused with the ratio, the form kept.
    await page.get_by_label("Agency Name", exact=True).fill(AGENCY)
    await page.get_by_label("Accent Colour", exact=True).fill("#ffcc00")
    await page.get_by_label("Footer Text", exact=True).fill(FOOTER)
    await page.get_by_role("button", name="Save Branding").click()
    await expect(page.get_by_role("alert")).to_contain_text(
        "White button text on #ffcc00 has a contrast ratio of 1.51:1"
    )
    await expect(page.get_by_label("Accent Colour", exact=True)).to_have_attribute(
        "aria-invalid", "true"
    )
    await expect(page.get_by_label("Agency Name", exact=True)).to_have_value(AGENCY)
    await check_accessible(page, admin=True)

    await page.get_by_label("Accent Colour", exact=True).fill("#1a5fb4")
    await page.get_by_label("Reply-To", exact=True).fill("hello@northwind.example")
    await page.get_by_role("button", name="Save Branding").click()
    await expect(page.get_by_role("status")).to_have_text("Branding saved.")

    await page.get_by_label("Logo", exact=True).set_input_files(
        files=[{"name": "logo.png", "mimeType": "image/png", "buffer": logo_png()}]
    )
    await page.get_by_role("button", name="Upload Logo").click()
    await expect(page.get_by_role("status")).to_have_text("Logo uploaded.")

    # The header, title and footer, and the accent through the served stylesheet.
    header = page.locator("header.site-header")
    await expect(header.get_by_text(AGENCY, exact=True)).to_be_visible()
    await expect(page).to_have_title(f"Branding · {AGENCY}")
    await expect(page.locator("footer").get_by_text(FOOTER)).to_be_visible()
    logo = header.locator("img.brand-logo")
    await expect(logo).to_be_visible()
    assert await logo.evaluate("img => img.complete && img.naturalWidth") == 180
    button = page.get_by_role("button", name="Save Branding")
    await expect(button).to_have_css("background-color", "rgb(26, 95, 180)")
    await check_accessible(page, admin=True)
    await screenshot(page, "settings-branding")

    # A client's invitation comes from the agency, with its logo.
    editor_url = await add_portal(page, "Harbour Launch", "Welcome aboard.")
    await expect(page).to_have_title(re.compile(f"· {AGENCY}$"))
    email = "skipper@harbour.example"
    await invite_client(page, editor_url, email)
    [message] = await stack.sink.wait_for(email)
    assert AGENCY in str(message["From"])
    assert message["Reply-To"] == "hello@northwind.example"
    assert str(message["Subject"]).endswith(f"on {AGENCY}")
    html = await latest_html(stack.sink, email)
    assert f'src="{stack.public_url}/branding/logo?v=' in html
    assert "background-color:#1a5fb4" in html


async def test_the_lightest_accent_branding_takes_keeps_every_page_readable(
    page: Page, stack: Stack, built_in_branding_after: None
) -> None:
    # #767676: white on it is 4.54:1, so Branding takes it; the pages also put it on their
    # grey background (#f0f0f1), as links' colour, where the same grey is only 3.99:1.
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        body = {"accent_colour": "#767676"}
        async with session.put(f"{stack.public_url}/api/v1/settings/branding", json=body) as r:
            assert r.status == 200, await r.text()
    await log_in_admin(page)
    editor_url = await add_portal(page, "Grey Accent", "Readable.")
    await invite_client(page, editor_url, "grey@accent.example")
    for path in (editor_url, "/admin/portals", "/admin/invitations", "/admin/settings"):
        await page.goto(path)
        await check_accessible(page, admin=True)
