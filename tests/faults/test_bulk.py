"""Issue 16: a broker restart and a PostgreSQL restart in the middle of a 5,000-row batch.
Every row is delivered, none twice, and the result is complete: a batch the database cut
short is sent again with its Idempotency-Key, and the retry answers the rows already
made as they were made, without sending them again.

This stops the shared PostgreSQL cluster and RabbitMQ for a few seconds: don't run it
beside other suites. Both are started again in ``finally``, whatever happens."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.faults.support import (
    Api,
    dead_letters,
    delivered,
    outboxes_drained,
    record,
    unique_emails,
    wait_until,
)
from tests.support.servers import current as current_servers
from tests.support.stack import Stack, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROWS = 5000
# A batch is answered once every row is written; on a loaded 2-core machine 5,000 rows
# take seconds, and a retry after the database came back redoes only what is missing.
BATCH_TIMEOUT = aiohttp.ClientTimeout(total=300)


async def _send_until_answered(
    api: Api, portal_id: str, emails: list[str], key: str
) -> tuple[list[dict[str, Any]], list[int | None]]:
    """POST the batch until it is answered in full; every try carries the same key.
    Returns the results and the status of each try (None: the connection broke)."""
    url = f"{api.stack.public_url}/api/v1/portals/{portal_id}/invitations/batch"
    body = {"invitations": [{"email": email} for email in emails]}
    tries: list[int | None] = []
    give_up = time.monotonic() + 300
    while time.monotonic() < give_up:
        try:
            async with api.session.post(
                url, json=body, headers={"Idempotency-Key": key}, timeout=BATCH_TIMEOUT
            ) as response:
                tries.append(response.status)
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError):
            tries.append(None)
            answer = None
        if tries[-1] == 200:
            assert answer is not None
            return answer["results"], tries
        # Only "come back later" answers while a server is away; anything else is a bug.
        assert tries[-1] in (None, 502, 503, 504), (tries, answer)
        await asyncio.sleep(0.5)
    raise AssertionError(f"the batch was never answered in full: {tries}")


async def _written(stack: Stack, portal_id: str) -> int:
    try:
        conn = await asyncpg.connect(stack.database_url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return 0
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM invitations.invitations WHERE portal_id = $1",
                uuid.UUID(portal_id),
            )
        )
    finally:
        await conn.close()


async def _cut_a_batch(stack: Stack, scenario: str, stop: Any, start: Any) -> None:
    api = Api(stack)
    try:
        portal = await api.create_portal(f"Bulk {scenario}")
        emails = unique_emails(f"bulk-{scenario}", ROWS)
        key = f"bulk-{scenario}-{uuid.uuid4().hex}"
        began = time.monotonic()
        sending = asyncio.create_task(_send_until_answered(api, portal["id"], emails, key))

        async def midway() -> bool:
            return await _written(stack, portal["id"]) >= ROWS // 5 or sending.done()

        await wait_until(midway, 120, "a fifth of the batch written")
        written_at_cut = await _written(stack, portal["id"])
        cut_at = time.monotonic()
        try:
            await asyncio.to_thread(stop)
        finally:
            await asyncio.to_thread(start)
        results, tries = await sending
        answered = round(time.monotonic() - began, 2)

        # The result is complete: one verdict per row, in order, every row invited.
        assert [r["row"] for r in results] == list(range(1, ROWS + 1))
        assert [r["email"] for r in results] == emails
        assert Counter(r["status"] for r in results) == {"created": ROWS}
        assert len({r["invitation_id"] for r in results}) == ROWS

        async def all_in() -> bool:
            return len(delivered(stack, emails)) == ROWS

        await wait_until(all_in, 600, f"{ROWS} emails", every=1.0)
        recovered = round(time.monotonic() - cut_at, 2)
        await outboxes_drained(stack, timeout=120)
        counts = delivered(stack, emails)
        duplicated = {a: n for a, n in counts.items() if n > 1}
        dead = await dead_letters(stack)
        record(
            f"bulk_{scenario}",
            rows=ROWS,
            rows_written_at_the_cut=written_at_cut,
            batch_tries=tries,
            seconds_to_the_full_answer=answered,
            emails_delivered=sum(counts.values()),
            duplicated=len(duplicated),
            dead_lettered=sum(dead.values()),
            seconds_from_cut_to_last_email=recovered,
        )
        assert duplicated == {}
        assert dead == dict.fromkeys(dead, 0)
        assert len(await _invitation_rows(stack, portal["id"])) == ROWS
    finally:
        await api.close()


async def _invitation_rows(stack: Stack, portal_id: str) -> list[asyncpg.Record]:
    return await db_fetch(
        stack, "SELECT id FROM invitations.invitations WHERE portal_id = $1", uuid.UUID(portal_id)
    )


async def test_postgres_restarted_in_the_middle_of_a_batch(stack: Stack) -> None:
    servers = current_servers()
    try:
        await _cut_a_batch(stack, "postgres", servers.stop_postgres, servers.start_postgres)
    finally:
        await asyncio.to_thread(servers.ensure_postgres_started)


async def test_broker_restarted_in_the_middle_of_a_batch(stack: Stack) -> None:
    servers = current_servers()

    def stop() -> None:
        servers.rabbitmqctl("stop_app")

    def start() -> None:
        servers.rabbitmqctl("start_app")
        servers.rabbitmqctl("await_startup")

    try:
        await _cut_a_batch(stack, "broker", stop, start)
    finally:
        await asyncio.to_thread(servers.rabbitmqctl, "start_app")
