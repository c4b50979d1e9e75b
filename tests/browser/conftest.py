"""Fixtures for the browser tests: one stack of real services for this folder, one
headless Debian Chromium driven by Playwright, and a fresh browser context per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, running_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000


@pytest.fixture(scope="session")
def browser_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
async def stack(browser_sink: SmtpSink) -> AsyncIterator[Stack]:
    async with running_stack(browser_sink) as running:
        yield running


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_context(
    chromium: Browser,
    stack: Stack,
    viewport: dict[str, int] | None = None,
    locale: str = "en-US",
) -> BrowserContext:
    """A fresh context; ``locale`` is the language the browser asks for (Accept-Language)."""
    context = await chromium.new_context(
        base_url=stack.public_url, viewport=viewport or DESKTOP, locale=locale
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
async def context(chromium: Browser, stack: Stack) -> AsyncIterator[BrowserContext]:
    ctx = await new_context(chromium, stack)
    yield ctx
    await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()
