"""One real stack for the security tests, a listener on every public event from the
start, and helpers to log in, call the API and collect the secrets a test handled."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import pytest

from libs.common import amqp_decode
from libs.common.broker import SERVICES, broker_user
from tests.support.smtp import SmtpSink
from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD, Browser, Stack, login, running_stack

CLIENT_PASSWORD = "a-long-client-password-7"


@dataclass
class PublicEvents:
    """Every message the services published on ``<prefix>.events`` since the stack started
    (``bodies``), and apart from them what anyone else did (``foreign``: the broker tests'
    hostile publishers, whose bodies may not even be JSON)."""

    bodies: list[tuple[str, bytes]] = field(default_factory=list)
    foreign: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Secrets:
    """Raw tokens and passwords the tests handled: none may show in the database, the
    logs or a public event."""

    values: set[str] = field(default_factory=lambda: {ADMIN_PASSWORD, CLIENT_PASSWORD})

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if v)


@pytest.fixture(scope="session")
def security_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
async def sec_stack(security_sink: SmtpSink) -> AsyncIterator[Stack]:
    async with running_stack(security_sink) as running:
        yield running


@pytest.fixture(scope="session")
async def public_events(sec_stack: Stack) -> AsyncIterator[PublicEvents]:
    """An exclusive queue bound with '#' to the public exchange, as any other system on
    the bus could bind one. Started with the stack, so it sees every test's events."""
    seen = PublicEvents()
    # It reads the hostile tests' messages too (test_hostile_properties): as a service does.
    amqp_decode.install()
    connection = await aio_pika.connect(sec_stack.env["AMQP_URL"])
    channel = await connection.channel()
    exchange = await channel.get_exchange(f"{sec_stack.env['BUS_PREFIX']}.events")
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, "#")

    # RabbitMQ vouches for user_id: a message in the name of a service is that service's.
    prefix = sec_stack.env["BUS_PREFIX"]
    services = {broker_user(prefix, service) for service in SERVICES}

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        kept = seen.bodies if message.user_id in services else seen.foreign
        kept.append((message.routing_key or "", message.body))
        await message.ack()

    await queue.consume(on_message)
    yield seen
    await connection.close()


@pytest.fixture(scope="session")
def secrets_seen() -> Secrets:
    return Secrets()


@pytest.fixture
async def stack(sec_stack: Stack, public_events: PublicEvents) -> Stack:
    return sec_stack


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Browser]:
    client = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert "/admin" in client.last_url
    yield client
    await client.close()


@pytest.fixture
async def anonymous(stack: Stack) -> AsyncIterator[Browser]:
    client = Browser(stack.public_url)
    yield client
    await client.close()


def unique_email(tag: str = "client") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


def cookie(browser: Browser, name: str) -> str | None:
    for morsel in browser.session.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


async def api(
    browser: Browser,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """A JSON API call with the browser's session, sending its CSRF cookie as the
    X-CSRF-Token header unless ``headers`` says otherwise. ``raw``: the body's bytes as
    they are, in place of ``body`` (JSON no serialiser writes: a key twice)."""
    sent = {"X-CSRF-Token": cookie(browser, "cp_csrf") or ""}
    sent.update(headers or {})
    async with browser.session.request(
        method,
        browser.base + path,
        json=body if raw is None else None,
        data=raw,
        headers=sent,
        allow_redirects=False,
    ) as response:
        text = await response.text()
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, text


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no csrf_token in the form"
    return found.group(1)


async def raw_post(
    stack: Stack,
    path: str,
    data: dict[str, str] | bytes,
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    """A POST without a cookie jar: exactly the cookies and headers given."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.public_url + path,
            data=data,
            cookies=cookies or {},
            headers=headers or {},
            allow_redirects=False,
        ) as response,
    ):
        return response.status, dict(response.headers), await response.text()
