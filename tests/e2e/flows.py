"""Steps a person takes, shared by the end-to-end tests."""

from __future__ import annotations

import re
import uuid

from tests.e2e.conftest import Browser, Stack
from tests.support.smtp import accept_link

CLIENT_PASSWORD = "a-long-client-password-7"


def unique_email(tag: str = "client") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


async def create_portal(
    admin: Browser, title: str, content: str, status: str = "Active"
) -> tuple[str, str]:
    """Add New Portal from All Portals; returns the editor's URL and HTML."""
    code, url, html = await admin.get("/admin/portals")
    assert code == 200 and "Add New Portal" in html
    href = re.search(r'<a[^>]+href="([^"]+)"[^>]*>\s*Add New Portal', html)
    assert href, "no Add New Portal link"
    code, url, html = await admin.get(href.group(1))
    code, url, html = await admin.submit(
        url, html, "Save Portal", {"Title": title, "Content": content, "Status": status}
    )
    assert code == 200, html[:1000]
    assert "Invite Client" in html, html[:1000]
    return url, html


async def invite(admin: Browser, editor_url: str, editor_html: str, email: str) -> str:
    code, url, html = await admin.submit(
        editor_url, editor_html, "Send Invitation", {"Email": email}
    )
    assert code == 200, html[:1000]
    return html


async def accept_from_email(
    stack: Stack, browser: Browser, email: str, password: str = CLIENT_PASSWORD
) -> tuple[int, str, str]:
    messages = await stack.sink.wait_for(email)
    link = accept_link(messages[-1])
    code, url, html = await browser.get(link)
    assert code == 200, html[:1000]
    return await browser.submit(
        url, html, "Set Password", {"Password": password, "Confirm Password": password}
    )
