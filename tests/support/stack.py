"""The whole stack as real processes (five services on a fresh database and bus prefix,
an aiosmtpd sink as SMTP) and a cookie-keeping client that submits forms by label."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from tests.support.env import Keyring, TestEnv, free_port, new_test_env, provisioned
from tests.support.forms import find_form
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.proxy import RoundRobinProxy
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
    broker: TestEnv
    keys: Keyring

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    async def restart(self, name: str) -> None:
        service = self.services[name]
        await asyncio.to_thread(service.stop)  # off the loop, as in ``started``
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
    env = stack_env(test_env, stack_sink, public_url, ports, extra_env)
    await asyncio.to_thread(run_migrations, env, ORDER)
    services = {name: ServiceProcess(name, ports[name], env) for name in ORDER}
    async with started(list(services.values())):
        yield Stack(
            services, stack_sink, public_url, env, test_env.database_url, test_env, test_env.keys
        )


def stack_env(
    test_env: TestEnv,
    stack_sink: SmtpSink,
    public_url: str,
    ports: dict[str, int],
    extra_env: dict[str, str],
) -> dict[str, str]:
    """Every service's environment: the database, bus, SMTP sink and keys of ``test_env``,
    and the internal URLs of the identity, portals and invitations on ``ports``."""
    return test_env.service_env(
        PUBLIC_URL=public_url,
        ADMIN_EMAIL=ADMIN_EMAIL,
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        IDENTITY_URL=f"http://127.0.0.1:{ports['identity']}",
        PORTALS_URL=f"http://127.0.0.1:{ports['portals']}",
        INVITATIONS_URL=f"http://127.0.0.1:{ports['invitations']}",
        MAILER_URL=f"http://127.0.0.1:{ports['mailer']}",
        GATEWAY_API_KEY=API_KEY,
        # Defaults a test may override through extra_env.
        **{
            # A test may put a proxy in front of the sink.
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(stack_sink.port),
            "MAILER_RETRY_BASE_SECONDS": "0.2",
            # The tests' webhook receivers listen on 127.0.0.x.
            "WEBHOOKS_ALLOW_PRIVATE": "true",
            "WEBHOOKS_RETRY_BASE_SECONDS": "0.2",
            "INVITATIONS_SWEEP_SECONDS": "1",
            # One key (GATEWAY_API_KEY) sends the whole suite's API invitations, a
            # 10,000-row batch among them, within the hour the cap per key counts.
            "INVITATIONS_REQUESTS_PER_KEY_HOUR": "1000000",
            "GATEWAY_CACHE_SECONDS": str(CACHE_SECONDS),
            **extra_env,
        },
    )


@asynccontextmanager
async def started(
    services: list[ServiceProcess], ready_timeout: float | None = None
) -> AsyncIterator[None]:
    """Start ``services`` in order, wait until every one is ready (within ``ready_timeout``,
    else ServiceProcess.wait_ready's bound); stop them in reverse."""
    for service in services:
        service.start()
    try:
        await asyncio.gather(
            *(
                s.wait_ready() if ready_timeout is None else s.wait_ready(ready_timeout)
                for s in services
            )
        )
        yield
    finally:
        # Stopped off the event loop: a test's proxy (a black hole, a TCP proxy) runs on
        # this loop, and a service shutting down closes its connections through it.
        # Blocking here held each service until ServiceProcess.stop's bound.
        for service in reversed(services):
            await asyncio.to_thread(service.stop)


@dataclass
class Replicas:
    """``count`` replicas of every service on one database and bus prefix: replica ``i``
    of each service calls replica ``i`` of identity, portals and invitations."""

    services: dict[str, list[ServiceProcess]]
    sink: SmtpSink
    public_url: str
    env: dict[str, str]  # replica 0's
    database_url: str
    broker: TestEnv
    keys: Keyring

    def __getitem__(self, name: str) -> list[ServiceProcess]:
        return self.services[name]


@asynccontextmanager
async def running_replicas(
    sink: SmtpSink, public_url: str, count: int = 2, **extra_env: str
) -> AsyncIterator[Replicas]:
    """Like running_stack, with ``count`` processes of each service on their own ports
    and management ports. ``public_url`` is whatever stands in front of the gateways
    (a test's proxy): the links in emails point there."""
    async with provisioned(new_test_env()) as test_env:
        ports = [{name: free_port() for name in ORDER} for _ in range(count)]
        envs = [stack_env(test_env, sink, public_url, p, extra_env) for p in ports]
        await asyncio.to_thread(run_migrations, envs[0], ORDER)
        services = {
            name: [
                ServiceProcess(name, p[name], env, replica=i + 1)
                for i, (p, env) in enumerate(zip(ports, envs, strict=True))
            ]
            for name in ORDER
        }
        # ``count`` times the processes starting at once, so ``count`` times the bound.
        everyone = [s for name in ORDER for s in services[name]]
        async with started(everyone, ready_timeout=120.0 * count):
            yield Replicas(
                services, sink, public_url, envs[0], test_env.database_url, test_env, test_env.keys
            )


@asynccontextmanager
async def replicas_behind_a_proxy(
    **extra_env: str,
) -> AsyncIterator[tuple[Replicas, RoundRobinProxy]]:
    """Two replicas of every service (running_replicas) with an SMTP sink, the gateways
    behind a round-robin proxy that appends X-Forwarded-For, as an ingress does: the
    proxy's address is the public one, in every emailed link."""
    sink = SmtpSink()
    sink.start()
    proxy = RoundRobinProxy()
    try:
        async with running_replicas(sink, proxy.url, **extra_env) as stack:
            await proxy.start([gateway.url for gateway in stack["gateway"]])
            try:
                yield stack, proxy
            finally:
                await proxy.stop()
    finally:
        sink.stop()


async def db_fetch(stack: Stack | Replicas, query: str, *args: Any) -> list[asyncpg.Record]:
    """One query on the stack's database, as its administrator (a test looks past the
    services' roles)."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


class Browser:
    """An HTTP client that keeps cookies and submits forms by their button and labels."""

    def __init__(self, base: str, local_address: str | None = None) -> None:
        self.base = base
        # From another loopback address (127.0.0.2, …): a client a proxy can tell apart.
        connector = aiohttp.TCPConnector(local_addr=(local_address, 0)) if local_address else None
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector
        )
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
