"""Settings → Webhooks in a real browser, by its labels: Add Endpoint shows the signing
secret once, an invitation from the editor reaches the receiver signed with it, the
delivery log and Redeliver, Rotate Secret, Delete."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Dialog, Page, expect

from tests.browser.pages import (
    add_portal,
    check_accessible,
    invite_client,
    log_in_admin,
    screenshot,
)
from tests.support.stack import Stack
from tests.support.webhooks import Received, Receiver, receiver, verify

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    async with receiver("127.0.0.3") as got:
        yield got


async def test_webhooks_screen(page: Page, stack: Stack, hook: Receiver) -> None:
    await log_in_admin(page)
    await page.get_by_role("link", name="Settings").click()
    await page.get_by_role("link", name="Webhooks").click()
    await expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
    await check_accessible(page, admin=True)

    # No event chosen: the form says so and keeps the URL.
    await page.get_by_label("URL", exact=True).fill(hook.url)
    await page.get_by_role("button", name="Add Endpoint").click()
    await expect(page.get_by_role("alert")).to_have_text("Choose at least one event.")
    await expect(page.get_by_label("URL", exact=True)).to_have_value(hook.url)
    await check_accessible(page, admin=True)

    await page.get_by_label("invitation.created", exact=True).check()
    await page.get_by_role("button", name="Add Endpoint").click()
    secret_box = page.get_by_label("Signing Secret", exact=True)
    await expect(secret_box).to_be_visible()
    secret = await secret_box.input_value()
    assert secret.startswith("whsec_"), secret
    await expect(page.get_by_role("heading", name=hook.url, exact=True)).to_be_visible()
    await check_accessible(page, admin=True)
    await screenshot(page, "webhooks")

    editor_url = await add_portal(page, "Initech Intranet", "Welcome pack.")
    email = f"peter-{uuid.uuid4().hex[:6]}@initech.example"  # the shared stack's own
    await invite_client(page, editor_url, email)

    def created(received: list[Received]) -> bool:
        return any(r.json["data"].get("email") == email for r in received)

    [made] = [r for r in await hook.wait_for(created) if r.json["data"].get("email") == email]
    assert made.json["type"] == "invitation.created" and verify(secret, made)

    # Shown once: the page never shows the secret again.
    await page.goto("/admin/settings/webhooks")
    assert secret not in await page.content()
    await expect(page.get_by_label("Signing Secret", exact=True)).to_have_count(0)
    section = page.get_by_role("region", name=hook.url, exact=True)
    row = section.get_by_role("row").filter(has_text="invitation.created")
    await expect(row.get_by_text("Delivered", exact=True)).to_be_visible()
    await expect(row.get_by_role("cell", name="200", exact=True)).to_be_visible()

    await row.get_by_role("button", name="Redeliver").click()
    await expect(page.get_by_role("status")).to_have_text("Delivery queued again.")

    def twice(received: list[Received]) -> bool:
        return sum(r.id == made.id for r in received) >= 2

    again = [r for r in await hook.wait_for(twice) if r.id == made.id][-1]
    assert verify(secret, again)

    questions: list[str] = []

    async def answer(dialog: Dialog) -> None:
        questions.append(dialog.message)
        await dialog.accept()

    page.on("dialog", answer)
    section = page.get_by_role("region", name=hook.url, exact=True)
    await section.get_by_role("button", name="Rotate Secret").click()
    rotated = await page.get_by_label("Signing Secret", exact=True).input_value()
    assert rotated.startswith("whsec_") and rotated != secret

    section = page.get_by_role("region", name=hook.url, exact=True)
    await section.get_by_role("button", name="Delete").click()
    await expect(page.get_by_role("status")).to_have_text("Webhook endpoint deleted.")
    await expect(page.get_by_role("region", name=hook.url, exact=True)).to_have_count(0)
    assert len(questions) == 2 and hook.url in questions[1]
