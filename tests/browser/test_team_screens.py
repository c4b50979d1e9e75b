"""Issue 15 in a real browser: Settings → API Keys (Create Key with a Name and scopes, the
key shown once and working with exactly its scopes, Revoke) and the Users screen's Change
Role, Disable and Enable. docs/screenshots/api-keys.png and users.png come from here."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from tests.browser.pages import (
    add_portal,
    check_accessible,
    client_of,
    log_in_admin,
    screenshot,
)
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


async def _status(stack: Stack, key: str, path: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(stack.public_url + path, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        return r.status


async def _accept_dialogs(page: Page) -> list[str]:
    asked: list[str] = []

    async def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", answer)
    return asked


async def test_a_key_is_created_shown_once_limited_to_its_scopes_and_revoked(
    page: Page, stack: Stack
) -> None:
    await log_in_admin(page)
    await page.get_by_role("link", name="Settings").click()
    await page.get_by_role("link", name="API Keys").click()
    await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()

    # A key with no scope is refused with a message beside the form.
    name = f"CRM sync {uuid.uuid4().hex[:4]}"
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_role("button", name="Create Key").click()
    await expect(page.get_by_role("alert")).to_be_visible()
    # It looks like every other error on the pages: the danger red, in bold.
    await expect(page.get_by_role("alert")).to_have_css("color", "rgb(179, 45, 46)")
    await expect(page.get_by_role("alert")).to_have_css("font-weight", "600")
    await check_accessible(page, admin=True)

    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("invitations:read", exact=True).check()
    await page.get_by_label("portals:read", exact=True).check()
    await page.get_by_role("button", name="Create Key").click()
    shown = page.get_by_label("New API key")
    await expect(shown).to_be_visible()
    key = await shown.input_value()
    assert len(key) >= 32
    row = page.get_by_role("row").filter(has_text=name)
    await expect(row).to_contain_text("invitations:read, portals:read")
    await check_accessible(page, admin=True)
    await screenshot(page, "api-keys")

    # Exactly its scopes: it reads invitations and portals, and may not manage keys.
    assert await _status(stack, key, "/api/v1/invitations") == 200
    assert await _status(stack, key, "/api/v1/portals") == 200
    assert await _status(stack, key, "/api/v1/keys") == 403

    # A reload sends the form again: its one-time id makes no second key, and the key
    # isn't shown again.
    await page.reload()
    await expect(page.get_by_role("status")).to_contain_text("already created its key")
    await expect(page.get_by_role("row").filter(has_text=name)).to_have_count(1)
    assert key not in await page.content()
    # Shown once: the page opened again no longer has it.
    await page.goto("/admin/settings/api-keys")
    await expect(page.get_by_label("New API key")).to_have_count(0)
    assert key not in await page.content()

    asked = await _accept_dialogs(page)
    await page.get_by_role("button", name=f"Revoke {name}").click()
    await expect(page.get_by_role("row").filter(has_text=name)).to_have_count(0)
    assert asked and name in asked[0]
    assert await _status(stack, key, "/api/v1/invitations") == 401


async def test_users_change_role_disable_enable_and_erase(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    await log_in_admin(page)
    email = f"team-{uuid.uuid4().hex[:6]}@example.com"
    editor = await add_portal(page, f"Team {email[:11]}", "Welcome.")
    # A client account to act on: invited, and accepted in a browser of its own.
    async with client_of(chromium, stack, page, editor, email):
        pass

    await page.goto("/admin/users")
    row = page.get_by_role("row").filter(has_text=email)
    await expect(row).to_be_visible()
    await page.get_by_label(f"Role of {email}", exact=True).select_option(label="Staff")
    await page.get_by_role("button", name=f"Change Role of {email}").click()
    await expect(page.get_by_label(f"Role of {email}", exact=True)).to_have_value(
        re.compile("staff", re.I)
    )

    asked = await _accept_dialogs(page)
    await page.get_by_role("button", name=f"Disable {email}").click()
    await expect(page.get_by_role("row").filter(has_text=email)).to_contain_text("Disabled")
    assert asked and email in asked[0]
    await check_accessible(page, admin=True)
    await screenshot(page, "users")
    await page.get_by_role("button", name=f"Enable {email}").click()
    await expect(page.get_by_role("button", name=f"Disable {email}")).to_be_visible()

    # Erase asks first, saying it can't be undone; then the row is gone.
    await page.get_by_role("button", name=f"Erase {email}").click()
    await expect(page.get_by_text(f"User {email} erased")).to_be_visible()
    assert "can't be undone" in asked[-1] and email in asked[-1]
    await expect(page.get_by_role("row").filter(has_text=email)).to_have_count(0)
