"""The whole stack as real processes (five services on a fresh database and bus prefix,
an aiosmtpd sink as SMTP) and a cookie-keeping client that submits forms by label."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from tests.support.env import TestEnv, free_port, new_test_env, provisioned
from tests.support.forms import find_form
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.smtp import SmtpSink

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct-horse-battery-staple-42"
ORDER = ("identity", "portals", "invitations", "mailer", "gateway")
API_KEY = "test-api-key-0123456789abcdef"
# The gateway trusts what identity and portals said this long (its default is 10 s): a
# test that moves a session's clock in the database waits this out, as real time would.
CACHE_SECONDS = 2.0


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


@asynccontextmanager
async def running_stack(sink: SmtpSink, **extra_env: str) -> AsyncIterator[Stack]:
    """A fresh database and bus prefix, migrated, with the five services started."""
    async with provisioned(new_test_env()) as test_env:
        async for stack in _run_stack(test_env, sink, extra_env):
            yield stack


async def _run_stack(
    test_env: TestEnv, stack_sink: SmtpSink, extra_env: dict[str, str]
) -> AsyncIterator[Stack]:
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
        GATEWAY_API_KEY=API_KEY,
        # Defaults a test may override through extra_env.
        **{
            "MAILER_RETRY_BASE_SECONDS": "0.2",
            "INVITATIONS_SWEEP_SECONDS": "1",
            "GATEWAY_CACHE_SECONDS": str(CACHE_SECONDS),
            **extra_env,
        },
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
        self.last_url = ""

    async def get(self, path: str) -> tuple[int, str, str]:
        url = path if path.startswith("http") else self.base + path
        async with self.session.get(url) as response:
            self.last_url = str(response.url)
            return response.status, self.last_url, await response.text()

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
            self.last_url = str(response.url)
            return response.status, self.last_url, await response.text()

    async def close(self) -> None:
        await self.session.close()


async def login(stack: Stack, email: str, password: str) -> Browser:
    client = Browser(stack.public_url)
    _, url, html = await client.get("/login")
    status, url, html = await client.submit(
        url, html, "Log In", {"Email": email, "Password": password}
    )
    assert status == 200, (status, url, html[:500])
    return client
