"""Steps the security tests share: a portal through the API, an invited client."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from tests.security.conftest import CLIENT_PASSWORD, Secrets, api, unique_email
from tests.support.smtp import accept_link
from tests.support.stack import Browser, Stack


async def new_portal(admin: Browser, content: str = "Welcome.", **extra: Any) -> dict[str, Any]:
    body = {"title": f"Portal {uuid.uuid4().hex[:6]}", "content": content, "status": "active"}
    body.update(extra)
    status, portal = await api(admin, "POST", "/api/v1/portals", body)
    assert status == 201, portal
    return dict(portal)


async def invite_link(stack: Stack, admin: Browser, portal_id: str, email: str) -> str:
    status, body = await api(
        admin, "POST", f"/api/v1/portals/{portal_id}/invitations", {"email": email}
    )
    assert status in (200, 201), body
    messages = await stack.sink.wait_for(email)
    return accept_link(messages[-1])


@dataclass
class Client:
    browser: Browser
    email: str
    portal: dict[str, Any]
    link: str


async def new_client(
    stack: Stack, admin: Browser, secrets: Secrets | None = None, content: str = "Welcome."
) -> Client:
    """A person invited to a fresh Active portal who accepted: logged in, on the portal."""
    portal = await new_portal(admin, content)
    email = unique_email()
    link = await invite_link(stack, admin, portal["id"], email)
    if secrets is not None:
        secrets.add(link.split("token=", 1)[1])
    browser = Browser(stack.public_url)
    code, url, html = await browser.get(link)
    assert code == 200, html[:500]
    code, url, html = await browser.submit(
        url,
        html,
        "Set Password",
        {"Password": CLIENT_PASSWORD, "Confirm Password": CLIENT_PASSWORD},
    )
    assert code == 200 and f"/client-portal/{portal['slug']}/" in url, (code, url, html[:500])
    return Client(browser, email, portal, link)
