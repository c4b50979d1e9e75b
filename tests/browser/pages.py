"""What a person does in the browser, shared by the browser tests; screenshots and the
accessibility checks every visited page passes."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser.axe import axe_violations, describe
from tests.browser.conftest import new_context
from tests.support.smtp import SmtpSink, accept_link, html_part
from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD, Stack

# `SCREENSHOTS=docs` (e.g. `make screenshots`) refreshes the README's pictures; an ordinary
# test run still takes every screenshot, into a scratch folder, so the tree stays clean.
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("SCREENSHOTS") == "docs"
    else Path(os.environ.get("TEST_LOG_DIR", "/tmp/clientpress-test-logs")) / "screenshots"
)
CLIENT_PASSWORD = "a-long-client-password-7"
DUPLICATE_IDS = """() => {
    const seen = new Map();
    for (const e of document.querySelectorAll("[id]")) seen.set(e.id, (seen.get(e.id) || 0) + 1);
    return [...seen].filter(([, count]) => count > 1).map(([id]) => id);
}"""


async def screenshot(page: Page, name: str) -> None:
    """Save <name>.png: what the page looks like today."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def check_accessible(page: Page, *, admin: bool = False) -> None:
    """Every control has a <label for>, the landmarks exist, errors are announced, no id is
    used twice, and axe-core finds nothing against WCAG 2.1 A and AA (tests/browser/axe.py)."""
    controls = page.locator("input:not([type=hidden]), select, textarea")
    for i in range(await controls.count()):
        control = controls.nth(i)
        control_id = await control.get_attribute("id")
        html = await control.evaluate("e => e.outerHTML")
        assert control_id, f"control without an id: {html}"
        labels = page.locator(f'label[for="{control_id}"]')
        assert await labels.count() == 1, f"control without one <label for>: {html}"
        assert (await labels.inner_text()).strip(), f"empty label for {html}"
    assert await page.locator("header").count() >= 1, "no header landmark"
    assert await page.locator("main").count() == 1, "no main landmark"
    if admin:
        assert await page.get_by_role("navigation").count() >= 1, "no nav landmark"
    errors = page.locator(".field-error, .form-error")
    for i in range(await errors.count()):
        error = errors.nth(i)
        role = await error.get_attribute("role")
        error_id = await error.get_attribute("id")
        described = error_id and await page.locator(f'[aria-describedby~="{error_id}"]').count()
        assert role == "alert" or described, await error.evaluate("e => e.outerHTML")
    # axe 4 no longer counts an id used twice (WCAG 2.2 made 4.1.1 obsolete), but a label,
    # aria-describedby or the skip link would still point at the first of them only.
    duplicated = await page.evaluate(DUPLICATE_IDS)
    assert not duplicated, f"ids used more than once on {page.url}: {duplicated}"
    violations = await axe_violations(page)
    assert not violations, f"axe-core on {page.url}:\n{describe(violations)}"


async def log_in(page: Page, email: str, password: str) -> None:
    await page.goto("/login")
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Log In").click()
    await page.wait_for_load_state()


async def log_in_admin(page: Page) -> None:
    await log_in(page, ADMIN_EMAIL, ADMIN_PASSWORD)
    await expect(page).to_have_url(re.compile(r"/admin/portals$"))


async def add_portal(page: Page, title: str, content: str, status: str = "Active") -> str:
    """All Portals → Add New Portal → Save Portal; returns the editor's URL."""
    await page.goto("/admin/portals")
    await page.get_by_role("link", name="Add New Portal").click()
    await page.get_by_label("Title", exact=True).fill(title)
    await page.get_by_label("Content", exact=True).fill(content)
    await page.get_by_label("Status", exact=True).select_option(label=status)
    await page.get_by_role("button", name="Save Portal").first.click()
    await expect(page.get_by_role("status")).to_have_text("Portal created.")
    await expect(page.get_by_role("heading", name="Invite Client")).to_be_visible()
    return page.url


async def invite_client(page: Page, editor_url: str, email: str) -> None:
    if page.url != editor_url:
        await page.goto(editor_url)
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(page.get_by_role("status")).to_contain_text(email)


async def latest_link(sink: SmtpSink, email: str, count: int = 1) -> str:
    messages = await sink.wait_for(email, count)
    return accept_link(messages[-1])


async def latest_html(sink: SmtpSink, email: str, count: int = 1) -> str:
    messages = await sink.wait_for(email, count)
    return html_part(messages[-1])


async def set_password(page: Page, password: str = CLIENT_PASSWORD) -> None:
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_label("Confirm Password", exact=True).fill(password)
    await page.get_by_role("button", name="Set Password").click()
    await page.wait_for_load_state()


async def screenshot_email(chromium: Browser, html: str, name: str) -> None:
    """Render an email's HTML part on a blank page (no CSP of ours), as a mail client would;
    axe-core finds nothing in it against WCAG 2.1 A and AA either."""
    context = await chromium.new_context(viewport={"width": 800, "height": 700})
    try:
        page = await context.new_page()
        await page.set_content(html)
        await expect(page.get_by_role("link", name=re.compile(r"\w"))).not_to_have_count(0)
        violations = await axe_violations(page)
        assert not violations, f"axe-core on the email {name}:\n{describe(violations)}"
        await screenshot(page, name)
    finally:
        await context.close()


@asynccontextmanager
async def client_of(
    chromium: Browser, stack: Stack, admin: Page, editor_url: str, email: str
) -> AsyncIterator[tuple[BrowserContext, Page]]:
    """Invite ``email`` from the editor, accept in a fresh context; yields it logged in."""
    await invite_client(admin, editor_url, email)
    link = await latest_link(stack.sink, email)
    context = await new_context(chromium, stack)
    try:
        page = await context.new_page()
        await page.goto(link)
        await set_password(page)
        await expect(page).to_have_url(re.compile(r"/client-portal/[a-z0-9-]+/$"))
        yield context, page
    finally:
        await context.close()
