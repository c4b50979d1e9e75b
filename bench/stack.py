"""The stack under test, started like tests/e2e: a fresh database ``cp_bench_<id>``, a
fresh bus prefix, every service's migrations, the five services as processes on free
ports, and the SMTP sink. Also the API client the benchmarks share."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
from yarl import URL

from libs.common import database_roles
from libs.common.broker import SERVICES, broker_user
from libs.common.provision import provision, remove_users
from tests.support.env import CONSUMERS, TestEnv, free_port, new_test_env
from tests.support.forms import find_form
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.servers import current as current_servers

from .sink import AiosmtpdSink, PostfixSink, start_sink

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "bench-admin-password-correct-horse"
ORDER = ("identity", "portals", "invitations", "mailer", "gateway")
SCHEMAS = ("identity", "portals", "invitations", "mailer", "gateway")


def new_bench_env() -> TestEnv:
    base = new_test_env()
    run = uuid.uuid4().hex[:10]
    name = f"cp_bench_{run}"
    return TestEnv(
        database_url=base.database_url.rsplit("/", 1)[0] + f"/{name}",
        admin_url=base.admin_url,
        database_name=name,
        amqp_url=current_servers().amqp_url,
        bus_prefix=f"cpbench-{run}",
    )


@dataclass
class Stack:
    env: TestEnv
    services: dict[str, ServiceProcess]
    sink: PostfixSink | AiosmtpdSink
    public_url: str
    api_key: str
    pool: asyncpg.Pool
    http: aiohttp.ClientSession
    extra_pids: dict[str, int] = field(default_factory=dict)
    admin_http: aiohttp.ClientSession | None = None
    read_auth: str = "api_key"

    async def login_admin(self) -> aiohttp.ClientSession:
        """A cookie-keeping session logged in as the administrator."""
        if self.admin_http is None:
            session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            async with session.get(self.public_url + "/login") as response:
                url, html = str(response.url), await response.text()
            form = find_form(html, "Log In")
            data = form.fill({"Email": ADMIN_EMAIL, "Password": ADMIN_PASSWORD})
            target = str(URL(url).join(URL(form.action or url)))
            async with session.post(target, data=data) as response:
                await response.read()
                if response.status != 200 or "/admin" not in str(response.url):
                    await session.close()
                    raise RuntimeError(f"admin login failed: {response.status} {response.url}")
            self.admin_http = session
        return self.admin_http

    async def get(self, path: str) -> tuple[int, Any]:
        """GET an /api/v1 path with the API key; if the gateway refuses the key on reads
        (401), fall back to an administrator session and remember that in ``read_auth``."""
        if self.read_auth == "api_key":
            status, body = await self.api("GET", path)
            if status != 401:
                return status, body
            self.read_auth = "admin_session"
        session = await self.login_admin()
        async with session.get(self.public_url + path) as response:
            return response.status, await response.json(content_type=None)

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(
            method, self.public_url + path, json=body, headers=self.api_headers
        ) as response:
            return response.status, await response.json(content_type=None)

    async def create_portal(self, title: str, content: str = "Welcome.") -> dict[str, Any]:
        status, portal = await self.api(
            "POST", "/api/v1/portals", {"title": title, "content": content, "status": "active"}
        )
        if status != 201:
            raise RuntimeError(f"create portal: {status} {portal}")
        return dict(portal)

    async def invite(self, portal_id: str, email: str, attempts: int = 100) -> dict[str, Any]:
        """Invite, waiting out the moment the invitations replica hasn't seen the portal."""
        for _ in range(attempts):
            status, body = await self.api(
                "POST", f"/api/v1/portals/{portal_id}/invitations", {"email": email}
            )
            if status in (200, 201):
                return dict(body)
            if status != 404:
                raise RuntimeError(f"invite: {status} {body}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"invite: portal {portal_id} never became known to invitations")

    async def sent_count(self) -> int:
        return (await self.sent_progress())[0]

    async def sent_progress(self) -> tuple[int, float | None]:
        """Deliveries sent so far, and when the last one was (epoch seconds)."""
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM max(sent_at))::float8 AS last"
            " FROM mailer.deliveries WHERE status = 'sent'"
        )
        assert row is not None
        return int(row["n"]), row["last"]

    def pids(self) -> dict[str, int]:
        pids = {n: s.proc.pid for n, s in self.services.items() if s.proc is not None}
        return pids | self.extra_pids


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM: the process's peak resident set, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


@asynccontextmanager
async def running_stack(**extra_env: str) -> AsyncIterator[Stack]:
    env = new_bench_env()
    admin = await asyncpg.connect(env.admin_url)
    await admin.execute(f'CREATE DATABASE "{env.database_name}"')
    await admin.close()
    # Each service's database role, as deployments make them (libs/common/database_roles.py).
    await database_roles.provision(env.database_url, env.database_passwords)
    # Each service's broker user, as make run makes them (libs/common/provision.py).
    await provision(
        env.amqp_url,
        env.bus_prefix,
        env.broker_passwords,
        {env.integration_user: env.integration_password},
    )
    sink = start_sink()
    services: dict[str, ServiceProcess] = {}
    pool: asyncpg.Pool | None = None
    http: aiohttp.ClientSession | None = None
    stack: Stack | None = None
    try:
        ports = {name: free_port() for name in ORDER}
        public_url = f"http://127.0.0.1:{ports['gateway']}"
        api_key = secrets.token_urlsafe(32)
        settings = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(sink.port),
            "PUBLIC_URL": public_url,
            "ADMIN_EMAIL": ADMIN_EMAIL,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "IDENTITY_URL": f"http://127.0.0.1:{ports['identity']}",
            "PORTALS_URL": f"http://127.0.0.1:{ports['portals']}",
            "INVITATIONS_URL": f"http://127.0.0.1:{ports['invitations']}",
            "MAILER_URL": f"http://127.0.0.1:{ports['mailer']}",
            "GATEWAY_API_KEY": api_key,
            # Every benchmark client comes from 127.0.0.1: lift the per-IP limit on accepts.
            "GATEWAY_RATE_PER_IP": "1000000",
            # The events and API cases send tens of thousands of invitations as one
            # integration and one key: no cap per integration or per key.
            "INVITATIONS_REQUESTS_PER_INTEGRATION_HOUR": "0",
            "INVITATIONS_REQUESTS_PER_KEY_HOUR": "0",
            "MAILER_RETRY_BASE_SECONDS": "0.2",
        }
        service_env = env.service_env(**{**settings, **extra_env})
        await asyncio.to_thread(run_migrations, service_env, SCHEMAS)
        services = {name: ServiceProcess(name, ports[name], service_env) for name in ORDER}
        for service in services.values():
            service.start()
        await asyncio.gather(*(s.wait_ready(60) for s in services.values()))
        pool = await asyncpg.create_pool(env.database_url, min_size=1, max_size=4)
        assert pool is not None
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        stack = Stack(env, services, sink, public_url, api_key, pool, http)
        yield stack
    finally:
        if http is not None:
            await http.close()
        if stack is not None and stack.admin_http is not None:
            await stack.admin_http.close()
        if pool is not None:
            await pool.close()
        for service in reversed(list(services.values())):
            service.stop()
        sink.stop()
        try:
            await _drop_bus(env)
            await remove_users(
                env.amqp_url,
                [broker_user(env.bus_prefix, s) for s in SERVICES] + [env.integration_user],
            )
        finally:
            admin = await asyncpg.connect(env.admin_url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{env.database_name}" WITH (FORCE)')
            await admin.close()
            await database_roles.drop(env.database_url)


async def _drop_bus(env: TestEnv) -> None:
    connection = await aio_pika.connect(env.amqp_url)
    try:
        channel = await connection.channel()
        for name in (*CONSUMERS, "bench-ceiling"):
            for queue in (f"{env.bus_prefix}.{name}", f"{env.bus_prefix}.{name}.dead"):
                await channel.queue_delete(queue)
        for kind in ("events", "mail", "dlx", "bench-ceiling"):
            await channel.exchange_delete(f"{env.bus_prefix}.{kind}")
    finally:
        await connection.close()
