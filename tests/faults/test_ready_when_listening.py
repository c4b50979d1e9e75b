"""Ready means the service takes requests on its own port. The management port opens
first, while the database is waited for, and the service's own port once every start
step is done: a ``/readyz`` of 200 in between sent callers (the tests' stacks, a
Kubernetes Service's endpoints) to a port that refused them, and the gateway answered
503 "unavailable" for the first requests after a start."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.env import TestEnv, free_port, new_test_env, provisioned
from tests.support.processes import ServiceProcess, run_migrations

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SLOW_STEP_SECONDS = 3.0

# The portals service with one more start step after its database, which takes a while
# (as seeding, a cache warm-up or a slow broker declaration may).
SLOW_START = f"""
import asyncio
from libs.common.runner import main
from services.portals.app import MIGRATIONS, SCHEMA, SERVICE, create_app
from services.portals.settings import PortalsSettings

def slow_app(settings):
    app = create_app(settings)

    async def slow_step(_):
        await asyncio.sleep({SLOW_STEP_SECONDS})
        yield

    app.cleanup_ctx.append(slow_step)
    return app

main(SERVICE, PortalsSettings, slow_app, schema=SCHEMA, migrations=MIGRATIONS)
"""


class SlowStartingPortals(ServiceProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", SLOW_START]


@pytest.fixture
async def own_env() -> AsyncIterator[TestEnv]:
    async with provisioned(new_test_env()) as env:
        yield env


async def test_ready_only_once_the_service_port_takes_requests(own_env: TestEnv) -> None:
    await asyncio.to_thread(run_migrations, own_env.service_env(), ("portals",))
    service = SlowStartingPortals("portals", free_port(), own_env.service_env())
    service.start()
    try:
        started = time.monotonic()
        await service.wait_ready()
        ready_after = round(time.monotonic() - started, 2)
        async with aiohttp.ClientSession() as session:
            try:
                # Any answer of the service's own is what counts (401: no service proof).
                async with session.get(service.url + "/nothing-here") as response:
                    answered: int | str = response.status
            except aiohttp.ClientConnectorError as exc:
                answered = str(exc)
            async with session.get(service.management_url + "/readyz") as response:
                body = await response.json()
        assert isinstance(answered, int), (answered, f"ready {ready_after}s after the start")
        assert body["checks"]["listening"] == "ok", body
    finally:
        await asyncio.to_thread(service.stop)
