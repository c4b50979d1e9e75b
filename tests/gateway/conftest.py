"""The gateway under test, in front of in-memory fakes of the internal APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.gateway.fakes import Backend, Json
from tests.support.env import TestEnv


@pytest.fixture
async def backend(migrated_schemas: TestEnv) -> AsyncIterator[Backend]:
    # Every test starts with no rate-limit counts (they live in the run's database).
    conn = await asyncpg.connect(migrated_schemas.database_url)
    try:
        await conn.execute("TRUNCATE gateway.rate_counters")
    finally:
        await conn.close()
    b = Backend()
    b.database_url = migrated_schemas.database_url  # type: ignore[attr-defined]
    servers = [
        TestServer(b.identity_app()),
        TestServer(b.portals_app()),
        TestServer(b.invitations_app()),
    ]
    for server in servers:
        await server.start_server()
    b.urls = [str(s.make_url("")) for s in servers]  # type: ignore[attr-defined]
    yield b
    for server in servers:
        await server.close()


def make_settings(backend: Backend, **extra: Any) -> GatewaySettings:
    identity, portals, invitations = backend.urls  # type: ignore[attr-defined]
    # The fakes announce no changes, so these tests ask them every time; test_cache.py
    # turns the cache on, on the run's own broker prefix.
    extra.setdefault("gateway_cache_seconds", 0)
    extra.setdefault("database_url", backend.database_url)  # type: ignore[attr-defined]
    extra.setdefault("public_url", "http://localhost:8080")
    # No mailer behind these fakes (test_branding.py starts a real one): pages show the
    # built-in branding, whatever else listens on the machine's default mailer port.
    extra.setdefault("mailer_url", "http://127.0.0.1:9")
    return GatewaySettings(
        identity_url=identity,
        portals_url=portals,
        invitations_url=invitations,
        **extra,
    )


@pytest.fixture
async def gw(backend: Backend) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(create_app(make_settings(backend))))
    await client.start_server()
    yield client
    await client.close()


async def csrf(client: TestClient) -> str:
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/")).get("cp_csrf")
    if cookie is None:
        await client.get("/login")
        cookie = client.session.cookie_jar.filter_cookies(client.make_url("/")).get("cp_csrf")
    assert cookie is not None
    return cookie.value


async def post_form(
    client: TestClient, path: str, data: dict[str, str] | None = None, **kw: Any
) -> Any:
    form = {"csrf_token": await csrf(client), **(data or {})}
    return await client.post(path, data=form, allow_redirects=False, **kw)


async def log_in(client: TestClient, user: Json, password: str) -> Any:
    response = await post_form(client, "/login", {"email": user["email"], "password": password})
    assert response.status == 303, await response.text()
    return response
