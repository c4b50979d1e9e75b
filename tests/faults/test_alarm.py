"""A resource alarm on the broker (disk or memory): RabbitMQ blocks every connection that
publishes (``connection.blocked``) and reads nothing more from it until the alarm clears.
The API goes on answering (the outbox keeps the events), readiness and ``/metrics`` say
the broker is blocking the service, a SIGTERM still stops it, and once the alarm clears
every email goes out once.

The alarm is a disk alarm raised on the run's broker for a few seconds (a free-disk limit
above any disk) and always lowered again in a ``finally``: it blocks every publisher on
that broker meanwhile, so don't run this beside other suites."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.faults.support import Api, all_delivered, per_address, unique_emails, wait_until
from tests.support.servers import current as current_servers
from tests.support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@contextlib.asynccontextmanager
async def disk_alarm() -> AsyncIterator[None]:
    """The broker short of disk, as far as it knows, until the block ends: its own limit
    is put back (as an absolute figure) whatever happens."""
    servers = current_servers()
    status = json.loads(
        await asyncio.to_thread(servers.rabbitmqctl, "status", "--formatter", "json")
    )
    limit = str(status["disk_free_limit"])
    await asyncio.to_thread(servers.rabbitmqctl, "set_disk_free_limit", "1000000GB")
    try:
        yield
    finally:
        await asyncio.to_thread(servers.rabbitmqctl, "set_disk_free_limit", limit)


async def _management(stack: Stack, service: str, path: str) -> Any:
    url = stack[service].management_url + path
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return (await response.json()) if path == "/readyz" else await response.text()


async def test_a_blocked_broker_is_reported_and_nothing_is_lost(stack: Stack, api: Api) -> None:
    portal = await api.create_portal("Alarm reported")
    emails = unique_emails("alarm", 3)
    async with disk_alarm():
        for email in emails:
            await api.invite(portal["id"], email)  # the API needs only PostgreSQL

        async def reported() -> bool:
            ready = await _management(stack, "invitations", "/readyz")
            return bool(ready["checks"].get("broker") == "blocked")

        await wait_until(reported, 15, "invitations' /readyz to report the broker blocking it")
        ready = await _management(stack, "invitations", "/readyz")
        # Blocked is reported, not a reason to leave the Service: the API still answers.
        assert ready["ready"] is True, ready
        metrics = await _management(stack, "invitations", "/metrics")
        assert "clientpress_broker_blocked 1.0" in metrics
    await all_delivered(stack, emails, timeout=60)
    assert set(per_address(stack, emails).values()) == {1}

    async def unblocked() -> bool:
        ready = await _management(stack, "invitations", "/readyz")
        return bool(ready["checks"].get("broker") == "ok")

    await wait_until(unblocked, 15, "invitations' /readyz to see the broker unblocked")
    assert "clientpress_broker_blocked 0.0" in await _management(stack, "invitations", "/metrics")
