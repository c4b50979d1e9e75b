"""Issue 17 on the staff screens in a real browser, by their labels: Settings → Branding
takes the agency's Language (German) and Time Zone (Europe/Berlin); Invite Client sends an
invitation in the Language chosen for it ("Deutsch"), which the Invitations screen lists
with its language, and whose email is German."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.browser.pages import add_portal, check_accessible, log_in_admin, screenshot
from tests.support.stack import API_KEY, Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
async def built_in_language_after(stack: Stack) -> AsyncIterator[None]:
    yield
    # The folder's other tests share this stack: English and UTC again.
    headers = {"Authorization": f"Bearer {API_KEY}"}
    built_in = {"default_locale": "en", "time_zone": "UTC"}
    async with aiohttp.ClientSession(headers=headers) as session:
        url = f"{stack.public_url}/api/v1/settings/branding"
        async with session.put(url, json=built_in) as r:
            assert r.status == 200, await r.text()


async def test_agency_language_and_time_zone_then_an_invitation_in_german(
    page: Page, stack: Stack, built_in_language_after: None
) -> None:
    await log_in_admin(page)
    await page.goto("/admin/settings/branding")
    language = page.get_by_label("Language", exact=True)
    zone = page.get_by_label("Time Zone", exact=True)
    await expect(language).to_have_value("en")  # the built-in agency language
    await expect(zone).to_have_value("UTC")

    # A zone that doesn't exist is refused with the reason, the choice kept.
    await language.select_option(label="Deutsch")
    await zone.fill("Europe/Atlantis")
    await page.get_by_role("button", name="Save Branding").click()
    await expect(page.get_by_text("Time zone must be an IANA time zone name")).to_be_visible()
    await expect(page.get_by_label("Time Zone", exact=True)).to_have_attribute(
        "aria-invalid", "true"
    )
    await expect(page.get_by_label("Language", exact=True)).to_have_value("de")
    await check_accessible(page, admin=True)

    await page.get_by_label("Time Zone", exact=True).fill("Europe/Berlin")
    await page.get_by_role("button", name="Save Branding").click()
    await expect(page.get_by_role("status")).to_have_text("Branding saved.")
    await expect(page.get_by_label("Language", exact=True)).to_have_value("de")
    await expect(page.get_by_label("Time Zone", exact=True)).to_have_value("Europe/Berlin")
    await screenshot(page, "branding-language")

    # Invite Client with Language "Deutsch".
    editor = await add_portal(page, f"Brandenburg Gate {uuid.uuid4().hex[:6]}", "Plans.")
    email = f"klara-{uuid.uuid4().hex[:8]}@example.com"
    await page.goto(editor)
    invite_language = page.get_by_label("Language", exact=True)
    await expect(invite_language).to_have_value("")  # "Agency default"
    await page.get_by_label("Email", exact=True).fill(email)
    await invite_language.select_option(label="Deutsch")
    await check_accessible(page, admin=True)
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(page.get_by_role("status")).to_contain_text(email)

    await page.goto("/admin/invitations")
    row = page.get_by_role("row").filter(has_text=email)
    await expect(row).to_have_count(1)
    await expect(row.get_by_role("cell").nth(1)).to_have_text(f"{email} (Deutsch)")
    await screenshot(page, "invitations-language")

    [message] = await stack.sink.wait_for(email)
    assert message["Content-Language"] == "de"
