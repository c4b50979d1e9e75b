"""The expiry sweep: pending past expiry → expired with invitation.expired, one sweeper."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.db import try_xact_lock
from services.invitations.api import DEPS
from services.invitations.handlers import SWEEP_LOCK, sweep_once
from tests.invitations.conftest import AppFactory, Clock, World, outbox_events

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


async def _invite(client: Client, world: World) -> uuid.UUID:
    portal = world.add_portal()
    response = await client.post(
        "/invitations",
        json={"portal_id": portal["id"], "email": f"s-{uuid.uuid4().hex[:8]}@example.com"},
    )
    assert response.status == 201
    return uuid.UUID((await response.json())["invitation"]["id"])


async def _status(pool: asyncpg.Pool, inv_id: uuid.UUID) -> str:
    return str(await pool.fetchval("SELECT status FROM invitations WHERE id = $1", inv_id))


async def test_sweep_expires_in_batches(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    ids = [await _invite(client, world) for _ in range(5)]
    deps = client.app[DEPS]
    clock.advance(days=13, hours=23)
    await sweep_once(deps, batch=2)
    assert {await _status(pool, i) for i in ids} == {"pending"}

    clock.advance(hours=1)  # exactly at expiry
    assert await sweep_once(deps, batch=2) >= 5
    assert {await _status(pool, i) for i in ids} == {"expired"}
    for inv_id in ids:
        events = [t for t, _ in await outbox_events(pool, str(inv_id))]
        assert events.count("invitation.expired") == 1
    assert await sweep_once(deps, batch=2) == 0


async def test_only_one_instance_sweeps(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id = await _invite(client, world)
    clock.advance(days=15)
    async with pool.acquire() as other, other.transaction():
        assert await try_xact_lock(other, SWEEP_LOCK)
        assert await sweep_once(client.app[DEPS]) == 0
        assert await _status(pool, inv_id) == "pending"
    assert await sweep_once(client.app[DEPS]) >= 1
    assert await _status(pool, inv_id) == "expired"


async def test_background_sweeper_runs(
    app_factory: AppFactory, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    client = await app_factory(invitations_sweep_seconds=0.05)
    inv_id = await _invite(client, world)
    clock.advance(days=30)
    for _ in range(200):
        if await _status(pool, inv_id) == "expired":
            break
        await asyncio.sleep(0.05)
    assert await _status(pool, inv_id) == "expired"
    # An expired invitation can still be resent: pending again with a fresh link.
    response = await client.post(f"/invitations/{inv_id}/resend")
    assert response.status == 200
    assert (await response.json())["status"] == "pending"


async def test_resending_an_expired_invitation_next_to_a_pending_one(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    portal = world.add_portal()
    email = f"twice-{uuid.uuid4().hex[:8]}@example.com"
    first = await client.post("/invitations", json={"portal_id": portal["id"], "email": email})
    old_id = (await first.json())["invitation"]["id"]
    clock.advance(days=15)
    await sweep_once(client.app[DEPS])
    second = await client.post("/invitations", json={"portal_id": portal["id"], "email": email})
    assert second.status == 201
    assert (await second.json())["invitation"]["id"] != old_id
    response = await client.post(f"/invitations/{old_id}/resend")
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "invitation_pending"
    assert await _status(pool, uuid.UUID(old_id)) == "expired"
