"""Steps a person takes, shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import aio_pika
import aio_pika.abc
import aiohttp
import orjson

from tests.support.smtp import accept_link
from tests.support.stack import API_KEY, Browser, Stack

T = TypeVar("T")

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


# --- the JSON API, the database and the bus, for the lifecycle and events tests -------
class Api:
    """The gateway's /api/v1 with the stack's API key."""

    def __init__(self, stack: Stack) -> None:
        self.base = stack.public_url + "/api/v1"
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"})

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body) as response:
            return response.status, await response.json()

    async def portal(self, title: str, status: str = "active") -> dict[str, Any]:
        code, portal = await self.call("POST", "/portals", {"title": title, "status": status})
        assert code == 201, portal
        return dict(portal)

    async def invite(self, portal_id: str, email: str) -> tuple[int, Any]:
        return await self.call("POST", f"/portals/{portal_id}/invitations", {"email": email})

    async def close(self) -> None:
        await self.session.close()


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 20.0
) -> T:
    """Poll ``check`` until it returns something other than None (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def bus_prefix(stack: Stack) -> str:
    return stack.env["BUS_PREFIX"]


def amqp_url(stack: Stack) -> str:
    """The example integration's broker user: publishes invitation.requested, reads the
    invitation lifecycle, nothing else."""
    return stack.broker.integration_url


def admin_amqp_url(stack: Stack) -> str:
    """The broker administrator's: a program that may bind to every public event."""
    return stack.broker.amqp_url


class Listener:
    """Another program on the bus: its own exclusive queue on the public events exchange."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, Any]]] = []

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        found = []
        for key, body, _ in self.messages:
            if event_type is None or key == event_type:
                try:
                    found.append(orjson.loads(body))
                except orjson.JSONDecodeError:
                    continue  # someone's poison message: not an event
        return found

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            return next((e for e in self.events() if match(e)), None)

        return await eventually(check, what, timeout)


@asynccontextmanager
async def listening(stack: Stack, *keys: str, url: str | None = None) -> AsyncIterator[Listener]:
    listener = Listener()
    connection = await aio_pika.connect_robust(url or amqp_url(stack))
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{bus_prefix(stack)}.events", ensure=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in keys:
            await queue.bind(exchange, routing_key=key)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                listener.messages.append(
                    (message.routing_key or "", message.body, dict(message.headers or {}))
                )

        await queue.consume(on_message)
        yield listener
    finally:
        await connection.close()


def envelope(
    data: dict[str, Any],
    *,
    event_type: str = "invitation.requested",
    version: int = 1,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """A v1 envelope as docs/design.md "Events" describes it, built by hand (no libs.common)."""
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "version": version,
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "crm-test",
        "correlation_id": correlation_id or f"crm-{uuid.uuid4().hex}",
        "data": data,
    }


async def publish_raw(
    stack: Stack, body: bytes, *, routing_key: str = "invitation.requested", **props: Any
) -> None:
    """Publish persistently with publisher confirms, as an outside program would."""
    connection = await aio_pika.connect(amqp_url(stack))
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{bus_prefix(stack)}.events", ensure=True)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            **props,
        )
        await exchange.publish(message, routing_key=routing_key, timeout=10)
    finally:
        await connection.close()


async def publish_event(stack: Stack, event: dict[str, Any]) -> None:
    await publish_raw(
        stack,
        orjson.dumps(event),
        message_id=event["id"],
        correlation_id=event["correlation_id"],
        type=event["type"],
    )
