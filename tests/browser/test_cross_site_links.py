"""A link to ClientPress followed from another site (a webmail, a chat, a notification) in
Chromium: the forms already open in the person's other tabs still send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html import escape

import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from tests.browser.conftest import new_context
from tests.browser.pages import add_portal, log_in_admin
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]

# Another site to the browser: a site is a host, and an address is a host of its own.
ELSEWHERE = "127.0.0.2"


@pytest.fixture
async def elsewhere(stack: Stack) -> AsyncIterator[str]:
    """A page on another site holding a link to the Invitations screen."""
    link = escape(stack.public_url + "/admin/invitations")

    async def page(_: web.Request) -> web.Response:
        body = f'<!doctype html><title>Chat</title><a href="{link}">Invitations</a>'
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, ELSEWHERE, 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://{ELSEWHERE}:{port}/"
    await runner.cleanup()


async def test_a_link_from_another_site_leaves_the_open_forms_working(
    chromium: Browser, stack: Stack, elsewhere: str
) -> None:
    """The CSRF cookie was SameSite=Strict: a navigation from another site came without it,
    so the gateway set a new one, and every form open in another tab (the portal editor
    and its hour of typing) then answered "The form expired, please try again." """
    context = await new_context(chromium, stack)
    try:
        editor = await context.new_page()
        await log_in_admin(editor)
        await add_portal(editor, "Linked From Chat", "Welcome.")
        await editor.get_by_label("Content", exact=True).fill("Typed while the chat pinged.")

        chat = await context.new_page()
        await chat.goto(elsewhere)
        await chat.get_by_role("link", name="Invitations").click()
        await expect(chat.get_by_role("heading", name="Invitations", exact=True)).to_be_visible()

        await editor.get_by_role("button", name="Save Portal").first.click()
        await expect(editor.get_by_role("status")).to_have_text("Portal saved.")
        await expect(editor.get_by_label("Content", exact=True)).to_have_value(
            "Typed while the chat pinged."
        )
    finally:
        await context.close()
