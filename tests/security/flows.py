"""Steps the security tests share: a portal through the API, an invited client, an
invitation.requested published as another program would and its answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiohttp
import orjson

from tests.security.conftest import (
    CLIENT_PASSWORD,
    PublicEvents,
    Secrets,
    api,
    cookie,
    unique_email,
)
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


async def set_password(stack: Stack, link: str) -> tuple[Browser, str]:
    """A new browser opens an invitation's link and sets its password: the browser,
    logged in, and where it landed."""
    browser = Browser(stack.public_url)
    code, url, html = await browser.get(link)
    assert code == 200, html[:500]
    code, url, html = await browser.submit(
        url,
        html,
        "Set Password",
        {"Password": CLIENT_PASSWORD, "Confirm Password": CLIENT_PASSWORD},
    )
    assert code == 200, (code, url, html[:500])
    return browser, url


async def post_form(browser: Browser, path: str, **fields: str) -> tuple[int, str]:
    """A form posted as the page would post it (its CSRF token included)."""
    data = {"csrf_token": cookie(browser, "cp_csrf") or "", **fields}
    async with browser.session.post(browser.base + path, data=data) as response:
        return response.status, await response.text()


async def user_id_of(admin: Browser, email: str) -> str:
    status, page = await api(admin, "GET", f"/api/v1/users?q={email}")
    assert status == 200, page
    return str(next(u["id"] for u in page["items"] if u["email"] == email))


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
    browser, url = await set_password(stack, link)
    assert f"/client-portal/{portal['slug']}/" in url, url
    return Client(browser, email, portal, link)


def invitation_requested(data: dict[str, Any], correlation_id: str | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "invitation.requested",
        "version": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "crm",
        "correlation_id": correlation_id or f"sec-{uuid.uuid4().hex[:8]}",
        "data": data,
    }


async def publish_as(
    url: str,
    stack: Stack,
    kind: str,
    event: dict[str, Any],
    *,
    ensure: bool = True,
    timeout: float = 10,
    **props: Any,
) -> None:
    """``event`` on the ``kind`` exchange as the user of ``url``, under publisher confirms
    (``props``: the message's own, such as ``user_id`` or ``expiration``)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{stack.broker.bus_prefix}.{kind}", ensure=ensure)
        await exchange.publish(
            aio_pika.Message(
                orjson.dumps(event),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=event["id"],
                **props,
            ),
            routing_key=event["type"],
            timeout=timeout,
        )
    finally:
        await connection.close()


async def publish_envelope(stack: Stack, envelope: dict[str, Any]) -> None:
    """On the events exchange, under the envelope's type, as the broker's administrator."""
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{stack.env['BUS_PREFIX']}.events")
        await exchange.publish(
            aio_pika.Message(
                orjson.dumps(envelope), message_id=envelope["id"], type=envelope["type"]
            ),
            routing_key=envelope["type"],
        )
    finally:
        await connection.close()


async def answer_to(
    stack: Stack, public_events: PublicEvents, routing_key: str, key: str, timeout: float = 20
) -> dict[str, Any]:
    """The first ``routing_key`` event the services published that mentions ``key``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for published, body in public_events.bodies:
            if published == routing_key and key in body.decode():
                return dict(orjson.loads(body))
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {routing_key} for {key}: {stack.services['invitations'].log_tail()}")


async def logged_in(stack: Stack, session: str) -> bool:
    """Does this cookie value, alone, open an admin or client page?"""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            stack.public_url + "/api/v1/users?limit=1",
            cookies={"cp_session": session},
            allow_redirects=False,
        ) as admin_api,
        http.get(
            stack.public_url + "/client-portal/",
            cookies={"cp_session": session},
            allow_redirects=False,
        ) as client_page,
    ):
        location = client_page.headers.get("Location", "")
        return admin_api.status == 200 or (
            client_page.status in (200, 303) and not location.startswith("/login")
        )
