"""Issue 9, fault 2: ``kill -9`` of each service in turn during a burst of invitations,
then started again. Every invitation is delivered exactly once and no outbox row or
delivery is left stuck.

The one window where a copy can go out twice is the mailer's: killed between the SMTP
server's "250 OK" and the commit that records it, the row stays 'sending' and is sent
again after MAILER_STUCK_SENDING_SECONDS (at-least-once; docs/reliability.md). The test
allows a second email only for a delivery that was 'sending' at the moment of the kill."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.support import (
    Api,
    all_delivered,
    burst,
    deliveries_settled,
    outboxes_drained,
    per_address,
    record,
    unique_emails,
    wait_until,
)
from tests.support.smtp import SmtpSink
from tests.support.stack import ORDER, Stack, db_fetch, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PER_SERVICE = 100  # 5 services: 500 invitations in all


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink) -> AsyncIterator[Stack]:
    # A crashed sender's row is requeued after 6 s here (120 s by default); a send is
    # bounded by 2 s, well under it, so a live send is never taken for a dead one.
    async with running_stack(
        sink, MAILER_STUCK_SENDING_SECONDS="6", MAILER_SMTP_TIMEOUT_SECONDS="2"
    ) as running:
        yield running


@pytest.mark.parametrize("victim", ORDER)
async def test_kill_9_during_a_burst(stack: Stack, victim: str) -> None:
    api = Api(stack)
    try:
        portal = await api.create_portal(f"Kill {victim}")
        emails = unique_emails(f"kill-{victim}", PER_SERVICE)
        start = time.monotonic()
        invites = asyncio.create_task(burst(api, portal["id"], emails, concurrency=8))
        await wait_until(
            lambda: _at_least(api, PER_SERVICE // 3, invites), 60, "a third of the burst"
        )
        stack[victim].kill()
        invited_before_kill = api.invited
        killed_at = time.monotonic()
        in_flight = await _sending_addresses(stack) if victim == "mailer" else set()
        await asyncio.sleep(0.5)
        stack[victim].start()
        await stack[victim].wait_ready()
        ready_after = round(time.monotonic() - killed_at, 2)
        await invites
        await all_delivered(stack, emails, timeout=60)
        recovered = round(time.monotonic() - killed_at, 2)
        await outboxes_drained(stack)
        await deliveries_settled(stack)
        counts = per_address(stack, emails)
        duplicated = {a: n for a, n in counts.items() if n > 1}
        record(
            f"kill9_{victim}",
            invitations=PER_SERVICE,
            invited_before_kill=invited_before_kill,
            emails_delivered=sum(counts.values()),
            addresses_delivered=len(counts),
            duplicated=len(duplicated),
            sending_at_kill=len(in_flight),
            client_retries=dict(api.retries),
            seconds_to_ready_after_kill=ready_after,
            seconds_from_kill_to_last_email=recovered,
            seconds_total=round(time.monotonic() - start, 2),
        )
        assert len(counts) == PER_SERVICE
        assert set(duplicated) <= in_flight, (duplicated, in_flight)
        assert all(n == 2 for n in duplicated.values()), duplicated
    finally:
        await api.close()


async def _at_least(api: Api, count: int, task: asyncio.Task[object]) -> bool:
    return api.invited >= count or task.done()


async def _sending_addresses(stack: Stack) -> set[str]:
    rows = await db_fetch(
        stack, "SELECT lower(to_address) AS a FROM mailer.deliveries WHERE status = 'sending'"
    )
    return {row["a"] for row in rows}
