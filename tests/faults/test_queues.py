"""A service's queue deleted under it and declared again by someone else, differently (a
classic queue without dead-lettering, as a hand-made fix or an old definitions file
would): RabbitMQ cancels the consumer (``basic.cancel``), and aio-pika's attempts to
declare the service's queue again are refused. The service must say it is not consuming,
in ``/readyz``, ``/metrics`` and its log, and consume again once its queue can be
declared."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import pytest

from tests.support.env import TestEnv, free_port, new_test_env, provisioned
from tests.support.processes import ServiceProcess, run_migrations

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture
async def own_env() -> AsyncIterator[TestEnv]:
    async with provisioned(new_test_env()) as env:
        yield env


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json() if url.endswith("z") else await response.text()


async def _until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.2)


async def test_a_consumer_the_broker_cancelled_is_reported_until_it_consumes_again(
    own_env: TestEnv,
) -> None:
    env = own_env.service_env()
    await asyncio.to_thread(run_migrations, env, ("portals",))
    service = ServiceProcess("portals", free_port(), env)
    service.start()
    queue = f"{own_env.bus_prefix}.portals"
    admin = await aio_pika.connect(own_env.amqp_url)
    try:
        await service.wait_ready()
        ready = service.management_url + "/readyz"

        async def consuming() -> bool:
            return bool((await _get(ready))["checks"].get("consumer") == "ok")

        await _until(consuming, "portals to consume")
        channel = await admin.channel()
        await channel.queue_delete(queue)
        await channel.declare_queue(queue, durable=True)  # classic: the service's is quorum

        async def reported() -> bool:
            return bool((await _get(ready))["checks"].get("consumer") == "cancelled")

        await _until(reported, "/readyz to report the consumer cancelled")
        body = await _get(ready)
        # Reported, as the broker is: the API still answers, and the events wait.
        assert body["ready"] is True, body
        assert f'clientpress_consumer_cancelled{{queue="{queue}"}} 1.0' in await _get(
            service.management_url + "/metrics"
        )
        assert "consumer_cancelled" in service.log_tail(200)

        # The stray queue goes: the service declares its own again and consumes.
        await channel.queue_delete(queue)
        await _until(consuming, "portals to consume again")
        assert f'clientpress_consumer_cancelled{{queue="{queue}"}} 0.0' in await _get(
            service.management_url + "/metrics"
        )
        assert "consumer_resumed" in service.log_tail(200)
    finally:
        await admin.close()
        await asyncio.to_thread(service.stop)
