"""The portals app on the run's real database and broker, served by aiohttp's TestServer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from libs.common.db import create_pool
from services.portals.app import create_app
from services.portals.settings import PortalsSettings
from tests.support.env import TestEnv


@pytest.fixture(scope="module")
async def client(migrated_schemas: TestEnv) -> AsyncIterator[TestClient[Any, Any]]:
    settings = PortalsSettings(
        database_url=migrated_schemas.database_url,
        amqp_url=migrated_schemas.amqp_url_as("portals"),
        bus_prefix=migrated_schemas.bus_prefix,
        **migrated_schemas.keys.settings("portals"),
    )
    proof = migrated_schemas.keys.client_middleware("gateway", "portals")
    async with TestClient(TestServer(create_app(settings)), middlewares=(proof,)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
async def db(migrated_schemas: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(migrated_schemas.database_url, "portals", max_size=20)
    yield pool
    await pool.close()


@pytest.fixture
def new_portal(
    client: TestClient[Any, Any],
) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def make(**body: Any) -> dict[str, Any]:
        body.setdefault("title", f"Portal {uuid.uuid4().hex[:8]}")
        body.setdefault("status", "active")
        resp = await client.post("/portals", json=body)
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())

    return make


async def outbox_events(pool: asyncpg.Pool, portal_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Events this service wrote about one portal, oldest first."""
    rows = await pool.fetch("SELECT routing_key, body FROM outbox ORDER BY seq")
    found = []
    for row in rows:
        envelope = orjson.loads(row["body"])
        if envelope["data"].get("portal_id") == portal_id:
            found.append((row["routing_key"], envelope["data"]))
    return found


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
