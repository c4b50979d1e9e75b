"""The portals service as a real process: it serves, consumes, and loses no event when it is
killed and started again."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from libs.common.bus import Bus
from libs.common.db import create_pool
from libs.common.events import InvitationAccepted, make_event
from tests.support.env import TestEnv, free_port
from tests.support.processes import ServiceProcess, run_migrations

pytestmark = pytest.mark.e2e


@pytest.fixture
async def service(migrated_schemas: TestEnv) -> AsyncIterator[ServiceProcess]:
    env = migrated_schemas.service_env()
    await asyncio.to_thread(run_migrations, env, ("portals",))
    process = ServiceProcess("portals", free_port(), env)
    process.start()
    await process.wait_ready()
    yield process
    await asyncio.to_thread(process.stop)


async def test_killed_service_applies_queued_invitation_after_restart(
    service: ServiceProcess, migrated_schemas: TestEnv
) -> None:
    proof = migrated_schemas.keys.client_middleware("gateway", "portals")
    async with aiohttp.ClientSession(service.url, middlewares=(proof,)) as http:
        async with http.post("/portals", json={"title": "Process", "status": "active"}) as resp:
            assert resp.status == 201
            portal = await resp.json()

        await asyncio.to_thread(service.stop, signal.SIGKILL)
        user = uuid.uuid4()
        bus = Bus(migrated_schemas.amqp_url_as("invitations"), migrated_schemas.bus_prefix, "x")
        await bus.connect()
        try:
            data = InvitationAccepted(
                invitation_id=uuid.uuid4(),
                portal_id=uuid.UUID(portal["id"]),
                email="late@example.com",
                user_id=user,
                sub_client=None,
            )
            await bus.publish_envelope(make_event("invitation.accepted", data, source="test"))
        finally:
            await bus.close()

        service.start()
        await service.wait_ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            async with http.get(f"/users/{user}/portals/{portal['slug']}") as resp:
                if resp.status == 200:
                    assert (await resp.json())["role"] == "client"
                    break
            assert loop.time() < deadline, service.log_tail()
            await asyncio.sleep(0.1)


async def test_a_page_saved_under_older_rules_is_rendered_again_at_start(
    service: ServiceProcess, migrated_schemas: TestEnv
) -> None:
    """An upgrade that fixes the sanitiser: the page saved before it is rendered again by
    the new version when it starts, without anyone saving it."""
    pool = await create_pool(migrated_schemas.database_url, "portals")
    try:
        await asyncio.to_thread(service.stop)
        portal_id = uuid.uuid4()
        await pool.execute(
            "INSERT INTO portals (id, title, slug, content, content_html, status, rendered_with)"
            " VALUES ($1, 'Upgraded', $2, '**Hello**', '<script>alert(1)</script>', 'active',"
            " '0; an older release')",
            portal_id,
            f"upgraded-{portal_id.hex[:12]}",
        )
        service.start()
        await service.wait_ready()
        proof = migrated_schemas.keys.client_middleware("gateway", "portals")
        async with aiohttp.ClientSession(service.url, middlewares=(proof,)) as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while True:
                async with http.get(f"/portals/{portal_id}") as resp:
                    html = (await resp.json())["content_html"]
                if html == "<p><strong>Hello</strong></p>\n":
                    break
                assert loop.time() < deadline, (html, service.log_tail())
                await asyncio.sleep(0.1)
    finally:
        await pool.close()
