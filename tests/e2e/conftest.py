"""The whole stack as real processes: five services, the run's database and bus prefix,
and an aiosmtpd sink as the SMTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.support.env import TestEnv, free_port, new_test_env, provisioned
from tests.support.forms import find_form
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.smtp import SmtpSink

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct-horse-battery-staple-42"
ORDER = ("identity", "portals", "invitations", "mailer", "gateway")


@dataclass
class Stack:
    services: dict[str, ServiceProcess]
    sink: SmtpSink
    public_url: str
    env: dict[str, str]
    database_url: str

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    async def restart(self, name: str) -> None:
        service = self.services[name]
        service.stop()
        service.start()
        await service.wait_ready()


@pytest.fixture(scope="session")
def stack_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
async def stack(stack_sink: SmtpSink) -> AsyncIterator[Stack]:
    # Its own database and bus prefix: the service tests' in-process consumers share
    # queue names with these processes and must not compete with them for messages.
    async with provisioned(new_test_env()) as test_env:
        async for stack in _run_stack(test_env, stack_sink):
            yield stack


async def _run_stack(test_env: TestEnv, stack_sink: SmtpSink) -> AsyncIterator[Stack]:
    ports = {name: free_port() for name in ORDER}
    public_url = f"http://127.0.0.1:{ports['gateway']}"
    env = test_env.service_env(
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(stack_sink.port),
        PUBLIC_URL=public_url,
        ADMIN_EMAIL=ADMIN_EMAIL,
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        IDENTITY_URL=f"http://127.0.0.1:{ports['identity']}",
        PORTALS_URL=f"http://127.0.0.1:{ports['portals']}",
        INVITATIONS_URL=f"http://127.0.0.1:{ports['invitations']}",
        MAILER_RETRY_BASE_SECONDS="0.2",
        INVITATIONS_SWEEP_SECONDS="1",
    )
    await asyncio.to_thread(run_migrations, env, ("identity", "portals", "invitations", "mailer"))
    services = {name: ServiceProcess(name, ports[name], env) for name in ORDER}
    for service in services.values():
        service.start()
    try:
        await asyncio.gather(*(s.wait_ready() for s in services.values()))
        yield Stack(services, stack_sink, public_url, env, test_env.database_url)
    finally:
        for service in reversed(list(services.values())):
            service.stop()


class Browser:
    """An HTTP client that keeps cookies and submits forms by their button and labels."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str) -> tuple[int, str, str]:
        url = path if path.startswith("http") else self.base + path
        async with self.session.get(url) as response:
            return response.status, str(response.url), await response.text()

    async def submit(
        self,
        page_url: str,
        html: str,
        button: str,
        fields: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[int, str, str]:
        form = find_form(html, button)
        data = form.fill(fields or {})
        data.update(extra or {})
        action = form.action or page_url
        url = str(aiohttp.client.URL(page_url).join(aiohttp.client.URL(action)))
        async with self.session.request(form.method.upper(), url, data=data) as response:
            return response.status, str(response.url), await response.text()

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[Browser]:
    client = Browser(stack.public_url)
    yield client
    await client.close()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Browser]:
    client = Browser(stack.public_url)
    _, url, html = await client.get("/login")
    status, url, html = await client.submit(
        url, html, "Log In", {"Email": ADMIN_EMAIL, "Password": ADMIN_PASSWORD}
    )
    assert status == 200 and "/admin" in url, (status, url, html[:500])
    yield client
    await client.close()
