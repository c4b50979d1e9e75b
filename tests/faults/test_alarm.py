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
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.faults.support import (
    Api,
    all_delivered,
    per_address,
    record,
    unique_emails,
    wait_until,
)
from tests.support.servers import current as current_servers
from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink) -> AsyncIterator[Stack]:
    # A webhook endpoint on this machine (never called: nothing it wants is published).
    async with running_stack(sink, WEBHOOKS_ALLOW_PRIVATE="true") as running:
        yield running


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


async def _connection_states(stack: Stack, service: str) -> set[str]:
    """The states RabbitMQ gives the service's connections (``blocked`` once it has
    published under the alarm)."""
    user = f"{stack.broker.bus_prefix}-{service}"
    listed = await asyncio.to_thread(
        current_servers().rabbitmqctl, "list_connections", "-q", "user", "state"
    )
    return {
        line.split("\t")[1]
        for line in listed.splitlines()
        if line.count("\t") == 1 and line.split("\t")[0] == user
    }


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


async def test_an_endpoint_added_while_the_broker_blocks_the_mailer_is_refused_at_once(
    stack: Stack, api: Api
) -> None:
    hook = {"url": "http://127.0.0.1:9/alarm", "events": ["invitation.created"]}
    async with disk_alarm():
        # The mailer publishes (settings.branding.changed), so RabbitMQ blocks it.
        status, body = await api.call("PUT", "/api/v1/settings/branding", {"agency_name": "A"})
        assert status == 200, body

        async def blocked() -> bool:
            return "blocked" in await _connection_states(stack, "mailer")

        await wait_until(blocked, 15, "RabbitMQ to block the mailer's connection")
        status, body = await api.call("POST", "/api/v1/webhooks", hook)
        # Its events could not be bound (the broker answers nothing): the documented
        # refusal, not the gateway's own timeout after 10 s.
        assert (status, body["error"]["code"]) == (503, "broker_unavailable"), body
        assert "message broker" in body["error"]["message"], body
    status, listed = await api.call("GET", "/api/v1/webhooks")
    assert status == 200 and listed["items"] == [], listed


async def test_sigterm_while_the_broker_blocks_the_service(stack: Stack, api: Api) -> None:
    portal = await api.create_portal("Alarm stop")
    emails = unique_emails("alarm-stop", 2)
    try:
        async with disk_alarm():
            for email in emails:
                await api.invite(portal["id"], email)

            async def blocked() -> bool:
                return "blocked" in await _connection_states(stack, "invitations")

            await wait_until(blocked, 15, "RabbitMQ to block invitations' connection")
            # Within Kubernetes' grace period (30 s), with room to spare; the broker reads
            # nothing from the service, so nothing it waits on the broker for can come.
            stopped_at = time.monotonic()
            code = await asyncio.to_thread(stack["invitations"].stop, signal.SIGTERM, 15.0)
            record(
                "alarm_sigterm",
                exit_code=code,
                seconds_to_stop=round(time.monotonic() - stopped_at, 2),
            )
            assert code == 0, stack["invitations"].log_tail()
    finally:
        process = stack["invitations"].proc
        if process is not None and process.poll() is not None:
            stack["invitations"].start()
            await stack["invitations"].wait_ready()
    # What it had committed was kept in its outbox and goes out once it is back.
    await all_delivered(stack, emails, timeout=60)
    assert set(per_address(stack, emails).values()) == {1}
