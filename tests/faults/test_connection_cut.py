"""PostgreSQL connections cut in the middle of a use case's transaction, not between
requests: a TCP proxy stands between invitations and PostgreSQL (the other services
connect directly), and every connection through it is dropped at chosen moments while a
batch is being written (its chunks' transactions, each writing invitations and their
outbox rows) and the outbox relay is publishing what was committed before (its
``FOR UPDATE SKIP LOCKED`` batch held while it awaits the broker's confirms).

The promise: the API answers 503 (never a 500, never "created" for a row not
committed), a retry with the same Idempotency-Key makes exactly what is missing, nothing
is published for a row not committed, every email goes once, and invitations recovers
without a restart. Only this module's proxy is cut: the shared servers are untouched."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
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
from tests.support.proxy import TcpProxy
from tests.support.stack import Stack, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROWS = 1000
CUTS = 3
BATCH_TIMEOUT = aiohttp.ClientTimeout(total=120)


@pytest.fixture(scope="module")
async def cut_stack(stack: Stack) -> AsyncIterator[tuple[Stack, dict[str, TcpProxy]]]:
    """The module's stack with invitations and the mailer restarted, each behind a proxy
    of its own to PostgreSQL."""
    database = urlsplit(stack.database_url)
    netloc = database.netloc.rsplit(":", 1)[0]
    proxies: dict[str, TcpProxy] = {}
    try:
        for name in ("invitations", "mailer"):
            proxy = proxies[name] = TcpProxy(
                database.hostname or "127.0.0.1", database.port or 5432
            )
            await proxy.start()
            service = stack[name]
            await asyncio.to_thread(service.stop)
            service.env = {
                **service.env,
                "DATABASE_URL": urlunsplit(database._replace(netloc=f"{netloc}:{proxy.port}")),
            }
            service.start()
            await service.wait_ready()
        yield stack, proxies
    finally:
        # Stopped while their database is still there, so each stops at once.
        for name, proxy in proxies.items():
            await asyncio.to_thread(stack[name].stop)
            await proxy.cut()


async def _cut(proxy: TcpProxy) -> None:
    """Every connection through ``proxy`` dropped; new ones go through again at once."""
    await proxy.cut()
    await proxy.start()


async def _committed(stack: Stack, portal_id: str) -> int:
    rows = await db_fetch(
        stack,
        "SELECT count(*) AS n FROM invitations.invitations WHERE portal_id = $1",
        uuid.UUID(portal_id),
    )
    return int(rows[0]["n"])


async def _writing(stack: Stack, proxy: TcpProxy) -> bool:
    """Whether one of ``proxy``'s connections is inside a transaction that has written
    (it has a transaction id): a chunk of the batch, or the relay's locked batch."""
    rows = await db_fetch(
        stack,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE client_port = ANY($1::int[])"
        " AND backend_xid IS NOT NULL",
        sorted(proxy.upstream_ports()),
    )
    return int(rows[0]["n"]) > 0


async def _send_until_answered(
    api: Api, portal_id: str, emails: list[str], key: str
) -> tuple[list[dict[str, Any]], list[tuple[int, Any]]]:
    url = f"{api.stack.public_url}/api/v1/portals/{portal_id}/invitations/batch"
    body = {"invitations": [{"email": email} for email in emails]}
    tries: list[tuple[int, Any]] = []
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        async with api.session.post(
            url, json=body, headers={"Idempotency-Key": key}, timeout=BATCH_TIMEOUT
        ) as response:
            answer = await response.json(content_type=None)
            tries.append((response.status, None if response.status == 200 else answer))
        if response.status == 200:
            return answer["results"], tries
        # A cut connection is "come back later", never an error of the server's own.
        assert response.status == 503, tries
        await asyncio.sleep(0.3)
    raise AssertionError(f"the batch was never answered in full: {tries}")


async def test_connections_cut_while_a_batch_is_written_and_sent(
    cut_stack: tuple[Stack, dict[str, TcpProxy]],
) -> None:
    stack, proxies = cut_stack
    api = Api(stack)
    try:
        portal = await api.create_portal("Cut mid-transaction")
        emails = unique_emails("cut", ROWS)
        key = f"cut-{uuid.uuid4().hex}"
        began = time.monotonic()
        sending = asyncio.create_task(_send_until_answered(api, portal["id"], emails, key))
        cuts_at: list[int] = []
        while len(cuts_at) < CUTS and not sending.done():
            # Inside a chunk's transaction: a connection through the proxy has written
            # invitations not committed yet (while the relay publishes earlier chunks).
            if await _writing(stack, proxies["invitations"]):
                cuts_at.append(await _committed(stack, portal["id"]))
                await _cut(proxies["invitations"])
            await asyncio.sleep(0.01)
        results, tries = await sending
        answered = round(time.monotonic() - began, 2)

        assert [r["row"] for r in results] == list(range(1, ROWS + 1))
        assert [r["email"] for r in results] == emails
        assert Counter(r["status"] for r in results) == {"created": ROWS}
        assert await _committed(stack, portal["id"]) == ROWS

        # While the relay publishes the batch's outbox and the mailer sends: both
        # services' connections cut, each time a few more emails are in.
        sent_at_each_cut: list[int] = []
        for n in range(CUTS):
            threshold = (n + 1) * ROWS // (CUTS + 2)

            async def sent_past(threshold: int = threshold) -> bool:
                return sum(delivered(stack, emails).values()) >= threshold

            await wait_until(sent_past, 120, f"{threshold} emails", every=0.05)
            sent_at_each_cut.append(sum(delivered(stack, emails).values()))
            await asyncio.gather(_cut(proxies["invitations"]), _cut(proxies["mailer"]))

        async def all_in() -> bool:
            return len(delivered(stack, emails)) == ROWS

        # Well within MAILER_STUCK_SENDING_SECONDS (120 s): nothing waits for the sweep.
        last_email = await wait_until(all_in, 60, f"{ROWS} emails", every=0.5)
        await asyncio.sleep(3)  # a second copy, were there one, would come by now
        await outboxes_drained(stack, timeout=60)
        counts = delivered(stack, emails)
        duplicated = {a: n for a, n in counts.items() if n > 1}
        dead = await dead_letters(stack)
        ready = [await _readyz(stack, name) for name in proxies]
        record(
            "connection_cut_mid_batch",
            rows=ROWS,
            committed_at_each_cut=cuts_at,
            sent_at_each_cut=sent_at_each_cut,
            seconds_from_the_last_cut_to_the_last_email=last_email,
            batch_tries=tries,
            seconds_to_the_full_answer=answered,
            emails_delivered=sum(counts.values()),
            duplicated=len(duplicated),
            dead_lettered=sum(dead.values()),
        )
        assert cuts_at, "the batch was answered before the first cut"
        # A cut inside a chunk's transaction ended the try under way.
        assert len(tries) > 1, tries
        assert duplicated == {}
        assert dead == dict.fromkeys(dead, 0)
        assert ready == [200, 200]
    finally:
        await api.close()


async def _readyz(stack: Stack, name: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(stack[name].management_url + "/readyz") as response,
    ):
        return response.status
