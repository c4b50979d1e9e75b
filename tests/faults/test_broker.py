"""Issue 9, fault 1: a burst of invitations while RabbitMQ drops every connection, and
while the broker application restarts. Every invitation gets exactly one email, the
outboxes drain and nothing is dead-lettered.

These tests act on the shared broker: every connection to it (not only this stack's)
is cut, so don't run them beside other suites."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.support import (
    Api,
    all_delivered,
    burst,
    dead_letters,
    outbox_backlog,
    outboxes_drained,
    per_address,
    record,
    unique_emails,
)
from tests.support.servers import current as current_servers
from tests.support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BURST = 500


async def _cut_midway(stack: Stack, api: Api, scenario: str, fault: list[list[str]]) -> None:
    """``fault``: rabbitmqctl commands, run in order once a quarter of the burst is in."""
    portal = await api.create_portal(f"Broker {scenario}")
    emails = unique_emails(scenario, BURST)
    start = time.monotonic()
    invites = asyncio.create_task(burst(api, portal["id"], emails))
    # Midway: once a fair share of the invitations are in.
    while len(per_address(stack, emails)) < BURST // 4 and not invites.done():
        await asyncio.sleep(0.05)
    cut_at = time.monotonic()
    for command in fault:
        await asyncio.to_thread(current_servers().rabbitmqctl, *command)
    await invites
    await all_delivered(stack, emails, timeout=90)
    recovered = round(time.monotonic() - cut_at, 2)
    await outboxes_drained(stack)
    counts = per_address(stack, emails)
    duplicated = {a: n for a, n in counts.items() if n > 1}
    dead = await dead_letters(stack)
    record(
        f"broker_{scenario}",
        invitations=BURST,
        emails_delivered=sum(counts.values()),
        addresses_delivered=len(counts),
        duplicated=len(duplicated),
        dead_lettered=sum(dead.values()),
        outbox_backlog=sum((await outbox_backlog(stack)).values()),
        client_retries=dict(api.retries),
        seconds_total=round(time.monotonic() - start, 2),
        seconds_from_fault_to_last_email=recovered,
    )
    assert len(counts) == BURST
    assert duplicated == {}
    assert dead == dict.fromkeys(dead, 0)


async def test_connections_closed_midway(stack: Stack, api: Api) -> None:
    await _cut_midway(stack, api, "connections_closed", [["close_all_connections", "fault test"]])


async def test_broker_app_restarted_midway(stack: Stack, api: Api) -> None:
    try:
        await _cut_midway(
            stack,
            api,
            "app_restarted",
            [
                ["stop_app"],
                ["start_app"],
                ["await_startup"],
            ],
        )
    finally:
        # Leave the broker running for whatever runs next, even after a failure.
        await asyncio.to_thread(current_servers().rabbitmqctl, "start_app")
