"""Pages as a browser gets them on a slow phone connection: a real Chromium (Playwright)
under Chromium's own network emulation (CDP Network.emulateNetworkConditions) walks the
client's journey (the emailed link's Set Password page, Set Password, the portal) and
the staff screens (Log In, the portal editor, Invitations with a full page of rows,
Import Clients with a 10,000-row file), each loaded on a cold cache and again on a warm
one: bytes over the wire, requests, requests answered from the cache, load time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import Browser, BrowserContext, CDPSession, Page, async_playwright

from .accept import PASSWORD, invited_links
from .stack import ADMIN_EMAIL, ADMIN_PASSWORD, Stack

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
PHONE = {"width": 390, "height": 844}
# A slow phone connection (Lighthouse's "slow 4G" as Chromium's DevTools throttle it):
# 1.6 Mbit/s down, 750 kbit/s up, 150 ms round trip.
NETWORK = {
    "offline": False,
    "latency": 150,
    "downloadThroughput": 1_600_000 / 8,
    "uploadThroughput": 750_000 / 8,
}
IMPORT_ROWS = 10_000
QUICK_IMPORT_ROWS = 1_000
TIMEOUT_MS = 180_000
CONTENT = "## Welcome\n\nYour project files, **timeline** and invoices live here.\n\n" + (
    "- A line of portal content with a [link](https://example.com).\n" * 20
)


@dataclass
class Traffic:
    """What the browser fetched between start() and the page's load: every request, what
    came over the wire (headers and body, compressed as sent), what the cache answered."""

    requests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def on_request(self, event: dict[str, Any]) -> None:
        entry = self.requests.setdefault(event["requestId"], {"bytes": 0, "cached": False})
        entry["url"] = event["request"]["url"]

    def on_response(self, event: dict[str, Any]) -> None:
        entry = self.requests.setdefault(event["requestId"], {"bytes": 0, "cached": False})
        response = event["response"]
        entry["status"] = response["status"]
        entry["encoding"] = {k.lower(): v for k, v in response["headers"].items()}.get(
            "content-encoding", ""
        )
        entry["cached"] = bool(response.get("fromDiskCache") or response.get("fromMemoryCache"))

    def on_finished(self, event: dict[str, Any]) -> None:
        entry = self.requests.setdefault(event["requestId"], {"bytes": 0, "cached": False})
        entry["bytes"] = int(event["encodedDataLength"])
        # A 200 that nothing came over the wire for: the HTTP cache answered it.
        if entry["bytes"] == 0 and entry.get("status") == 200:
            entry["cached"] = True
        entry["done"] = True

    def on_failed(self, event: dict[str, Any]) -> None:
        entry = self.requests.setdefault(event["requestId"], {"bytes": 0, "cached": False})
        entry["done"] = True

    def settled(self) -> bool:
        return all(r.get("done") for r in self.requests.values())

    def on_cache(self, event: dict[str, Any]) -> None:
        entry = self.requests.setdefault(event["requestId"], {"bytes": 0, "cached": False})
        entry["cached"] = True

    def summary(self) -> dict[str, Any]:
        items = self.requests.values()
        network = [r for r in items if not r["cached"]]
        return {
            "requests": len(self.requests),
            "network_requests": len(network),
            "from_cache": len(self.requests) - len(network),
            "revalidated_304": sum(1 for r in network if r.get("status") == 304),
            "bytes": sum(r["bytes"] for r in items),
            "compressed_responses": sum(1 for r in network if r.get("encoding")),
        }


class Probe:
    """One page's CDP session: network emulation on, every request counted."""

    def __init__(self, cdp: CDPSession) -> None:
        self.cdp = cdp
        self.traffic = Traffic()
        cdp.on("Network.requestWillBeSent", lambda e: self.traffic.on_request(e))
        cdp.on("Network.responseReceived", lambda e: self.traffic.on_response(e))
        cdp.on("Network.loadingFinished", lambda e: self.traffic.on_finished(e))
        cdp.on("Network.loadingFailed", lambda e: self.traffic.on_failed(e))
        cdp.on("Network.requestServedFromCache", lambda e: self.traffic.on_cache(e))

    @classmethod
    async def attach(cls, context: BrowserContext, page: Page) -> Probe:
        cdp = await context.new_cdp_session(page)
        await cdp.send("Network.enable")
        await cdp.send("Network.emulateNetworkConditions", NETWORK)
        return cls(cdp)

    async def measure(
        self, page: Page, action: Callable[[], Awaitable[None]], *, cold: bool
    ) -> dict[str, Any]:
        if cold:
            await self.cdp.send("Network.clearBrowserCache")
        self.traffic = Traffic()
        started = time.perf_counter()
        await action()
        await page.wait_for_load_state("load")
        elapsed = time.perf_counter() - started
        # CDP's events come on their own channel: wait until every request has finished.
        for _ in range(100):
            if self.traffic.settled():
                break
            await asyncio.sleep(0.02)
        return {**self.traffic.summary(), "load_ms": round(elapsed * 1000)}


async def _log_in(page: Page, email: str, password: str) -> None:
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Log In").click()


def _csv(rows: int, tag: str) -> dict[str, Any]:
    lines = ["email,name"] + [f"import-{tag}-{n}@example.com,Client {n}" for n in range(rows)]
    return {"name": "clients.csv", "mimeType": "text/csv", "buffer": "\n".join(lines).encode()}


async def _client_journey(browser: Browser, stack: Stack, link: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    context = await browser.new_context(viewport=PHONE, base_url=stack.public_url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        probe = await Probe.attach(context, page)

        async def open_link() -> None:
            await page.goto(link)

        # The link from the email on a phone that never saw the site; then the same page
        # again (its GET never uses the token up).
        results.append(
            {"case": "accept_page", "visit": "first"}
            | await probe.measure(page, open_link, cold=True)
        )
        results.append(
            {"case": "accept_page", "visit": "repeat"}
            | await probe.measure(page, open_link, cold=False)
        )

        async def set_password() -> None:
            await page.get_by_label("Password", exact=True).fill(PASSWORD)
            await page.get_by_label("Confirm Password", exact=True).fill(PASSWORD)
            async with page.expect_navigation(url="**/client-portal/**"):
                await page.get_by_role("button", name="Set Password").click()

        # Set Password → the portal, with what the Set Password page left in the cache.
        results.append(
            {"case": "set_password_to_portal", "visit": "first"}
            | await probe.measure(page, set_password, cold=False)
        )
        portal_url = page.url

        async def open_portal() -> None:
            await page.goto(portal_url)

        results.append(
            {"case": "portal", "visit": "repeat"}
            | await probe.measure(page, open_portal, cold=False)
        )
    finally:
        await context.close()
    return results


async def _staff_screens(
    browser: Browser, stack: Stack, portal_id: str, rows: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    context = await browser.new_context(viewport=PHONE, base_url=stack.public_url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        probe = await Probe.attach(context, page)

        async def open_login() -> None:
            await page.goto("/login")

        results.append(
            {"case": "login", "visit": "first"} | await probe.measure(page, open_login, cold=True)
        )
        results.append(
            {"case": "login", "visit": "repeat"} | await probe.measure(page, open_login, cold=False)
        )

        async def log_in() -> None:
            async with page.expect_navigation(url="**/admin/portals"):
                await _log_in(page, ADMIN_EMAIL, ADMIN_PASSWORD)

        results.append(
            {"case": "log_in_to_all_portals", "visit": "repeat"}
            | await probe.measure(page, log_in, cold=False)
        )
        for case, path in (
            ("portal_editor", f"/admin/portals/{portal_id}"),
            ("import_page", f"/admin/portals/{portal_id}/import"),
        ):

            async def open_page(path: str = path) -> None:
                await page.goto(path)

            for visit, cold in (("first", True), ("repeat", False)):
                results.append(
                    {"case": case, "visit": visit} | await probe.measure(page, open_page, cold=cold)
                )

        tag = uuid.uuid4().hex[:6]

        async def preview() -> None:
            await page.get_by_label("CSV File", exact=True).set_input_files(
                _csv(rows, tag)  # type: ignore[arg-type]
            )
            await page.locator("#import-send").wait_for(state="visible")

        results.append(
            {"case": "import_preview", "visit": "repeat", "rows": rows}
            | await probe.measure(page, preview, cold=False)
        )

        async def send() -> None:
            await page.locator("#import-send").click()
            summary = page.locator("#import-results-summary")
            await summary.wait_for(state="visible")
            await page.wait_for_function(
                "() => document.querySelector('#import-results-summary').textContent"
                ".startsWith('Done')",
                timeout=TIMEOUT_MS,
            )

        results.append(
            {"case": "import_send", "visit": "repeat", "rows": rows}
            | await probe.measure(page, send, cold=False)
        )

        async def invitations() -> None:
            await page.goto("/admin/invitations")

        for visit, cold in (("first", True), ("repeat", False)):
            measured = await probe.measure(page, invitations, cold=cold)
            html = len((await page.content()).encode())
            shown = await page.locator("table tbody tr").count()
            results.append(
                {"case": "invitations", "visit": visit, "rows_shown": shown, "html_bytes": html}
                | measured
            )
    finally:
        await context.close()
    return results


async def run(stack: Stack, quick: bool) -> list[dict[str, Any]]:
    rows = QUICK_IMPORT_ROWS if quick else IMPORT_ROWS
    tag = f"web-{uuid.uuid4().hex[:6]}"
    portal = await stack.create_portal(f"Web bench {tag}", CONTENT)
    (link,) = await invited_links(stack, portal["id"], 1, tag)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            results = await _client_journey(browser, stack, link)
            results += await _staff_screens(browser, stack, portal["id"], rows)
        finally:
            await browser.close()
    network = {
        "down_kbit_s": NETWORK["downloadThroughput"] * 8 / 1000,
        "up_kbit_s": NETWORK["uploadThroughput"] * 8 / 1000,
        "rtt_ms": NETWORK["latency"],
    }
    return [{"bench": "webperf", **result, "network": network} for result in results]
