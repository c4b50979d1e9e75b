"""Database faults short of an outage, each on this module's own test database only (never
server-wide): a failover to a read-only standby, then a lock held on a busy table. The
API answers 503 with Retry-After (never a 500), readiness says what is wrong, no event is
dead-lettered, and the services heal by themselves once the fault ends."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from libs.common.events import InvitationRequested
from tests.faults.support import (
    Api,
    all_delivered,
    dead_letters,
    fetch,
    outboxes_drained,
    per_address,
    publish,
    record,
    unique_emails,
    wait_until,
)
from tests.support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SERVICES_WITH_SCHEMA = ("gateway", "identity", "portals", "invitations", "mailer")


def _database(stack: Stack) -> str:
    return urlsplit(stack.database_url).path.lstrip("/")


async def _admin_conn(stack: Stack) -> asyncpg.Connection:
    # The maintenance database: settings of the test database are changed from outside it.
    parts = urlsplit(stack.database_url)
    return await asyncpg.connect(parts._replace(path="/postgres").geturl())


async def _terminate_services(admin: asyncpg.Connection, database: str) -> int:
    """End every connection to the test database but this one's (a failover does)."""
    rows = await admin.fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return len(rows)


async def _readyz(session: aiohttp.ClientSession, stack: Stack, name: str) -> tuple[int, dict]:
    async with session.get(stack[name].management_url + "/readyz") as response:
        return response.status, await response.json()


async def test_failover_to_read_only_standby(stack: Stack) -> None:
    """The database turns read-only (a failover to a standby, the services' connections
    cut), traffic goes on, then it is writable again while the services keep the
    connections they opened meanwhile: writes answer 503, readiness says read-only, an
    inbound event waits instead of being dead-lettered, and everything heals by itself."""
    api = Api(stack)
    database = _database(stack)
    admin = await _admin_conn(stack)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    try:
        portal = await api.create_portal("Read-only failover")
        before = unique_emails("ro-before", 3)
        for email in before:
            await api.invite(portal["id"], email)
        await all_delivered(stack, before, timeout=30)

        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        try:
            terminated = await _terminate_services(admin, database)
            during = unique_emails("ro-during", 1)[0]
            started = time.monotonic()
            status, body = await api.call(
                "POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": during}
            )
            api_seconds = round(time.monotonic() - started, 2)
            async with api.session.post(
                stack.public_url + f"/api/v1/portals/{portal['id']}/invitations",
                json={"email": during},
            ) as response:
                retry_after = response.headers.get("Retry-After")
            event_email = unique_emails("ro-event", 1)[0]
            key = f"ro-{uuid.uuid4().hex}"
            await publish(
                stack,
                "invitation.requested",
                InvitationRequested(portal_id=portal["id"], email=event_email, idempotency_key=key),
            )
            ready_during = {}
            for name in SERVICES_WITH_SCHEMA:
                ready_during[name] = await _readyz(session, stack, name)
            # Give the consumer time to spend its deliveries, had it counted them.
            await asyncio.sleep(8)
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        ended = time.monotonic()

        after = unique_emails("ro-after", 1)[0]
        await api.invite(portal["id"], after, deadline=60)
        healed = round(time.monotonic() - ended, 2)
        await all_delivered(stack, [after, event_email], timeout=60)
        await outboxes_drained(stack)
        ready_after = {}
        for name in SERVICES_WITH_SCHEMA:
            ready_after[name] = await wait_until(
                lambda n=name: _ready(session, stack, n), 30, f"{name} ready"
            )
        dead = await dead_letters(stack)
        counts = per_address(stack, [after, event_email, *before])
        record(
            "read_only_failover",
            connections_terminated=terminated,
            api_status_while_read_only=status,
            api_body_while_read_only=body,
            api_seconds_while_read_only=api_seconds,
            retry_after=retry_after,
            readyz_while_read_only={n: s for n, (s, _) in ready_during.items()},
            readyz_checks_while_read_only={
                n: b.get("checks") for n, (_, b) in ready_during.items()
            },
            seconds_to_first_invite_after=healed,
            seconds_to_ready_after=ready_after,
            dead_lettered=dead,
            client_retries=dict(api.retries),
        )
        assert status == 503, body
        assert body["error"]["code"] == "unavailable", body
        assert retry_after, "no Retry-After on the 503"
        for name, (ready_status, ready_body) in ready_during.items():
            assert ready_status == 503, (name, ready_body)
            assert ready_body["checks"]["database"] == "read-only", (name, ready_body)
        assert dead == dict.fromkeys(dead, 0)
        assert all(n == 1 for n in counts.values()), counts
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await admin.close()
        await session.close()
        await api.close()


async def _ready(session: aiohttp.ClientSession, stack: Stack, name: str) -> bool:
    status, _ = await _readyz(session, stack, name)
    return status == 200


async def _invitation_count(stack: Stack, email: str) -> int:
    rows = await fetch(
        stack,
        "SELECT count(*) AS n FROM invitations.invitations WHERE email_lower = $1",
        email.lower(),
    )
    return int(rows[0]["n"])


LOCK_SECONDS = 25
LOCKED_REQUESTS = 30


async def test_lock_held_on_the_invitations_table(stack: Stack) -> None:
    """Another session holds ACCESS EXCLUSIVE on invitations.invitations for a while under
    a burst of invitations: each request gets a clear answer, a 503 means nothing was
    made (a client that retries after it must not send a second email), and the service
    answers again as soon as the lock goes."""
    api = Api(stack)
    locker = await asyncpg.connect(stack.database_url)
    try:
        portal = await api.create_portal("Locked table")
        await api.invite(portal["id"], unique_emails("lock-warm", 1)[0])
        emails = unique_emails("lock", LOCKED_REQUESTS)
        answers: dict[str, tuple[int, str, float, str | None]] = {}

        async def one(email: str) -> None:
            started = time.monotonic()
            async with api.session.post(
                stack.public_url + f"/api/v1/portals/{portal['id']}/invitations",
                json={"email": email},
                timeout=aiohttp.ClientTimeout(total=LOCK_SECONDS * 3),
            ) as response:
                body = await response.json()
                code = body.get("error", {}).get("code", "") if response.status >= 400 else ""
                answers[email] = (
                    response.status,
                    code,
                    round(time.monotonic() - started, 2),
                    response.headers.get("Retry-After"),
                )

        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE invitations.invitations IN ACCESS EXCLUSIVE MODE")
        locked_at = time.monotonic()
        try:
            requests = [asyncio.create_task(one(email)) for email in emails]
            await asyncio.sleep(LOCK_SECONDS)
        finally:
            await tx.rollback()
        released = time.monotonic()
        await asyncio.gather(*requests)
        after = unique_emails("lock-after", 1)[0]
        await api.invite(portal["id"], after, deadline=60)
        first_after = round(time.monotonic() - released, 2)
        # Whatever the service still had queued has finished by now.
        await asyncio.sleep(12)
        made = {email: await _invitation_count(stack, email) for email in emails}
        refused_but_made = sorted(e for e, (s, _, _, _) in answers.items() if s != 201 and made[e])
        statuses: dict[str, int] = {}
        for status, code, _, _ in answers.values():
            statuses[f"{status} {code}".strip()] = statuses.get(f"{status} {code}".strip(), 0) + 1
        record(
            "lock_on_invitations",
            lock_seconds=LOCK_SECONDS,
            requests=LOCKED_REQUESTS,
            statuses=statuses,
            seconds_to_answer=sorted(t for _, _, t, _ in answers.values()),
            refused_but_made=len(refused_but_made),
            seconds_from_release_to_next_invite=first_after,
            seconds_locked=round(released - locked_at, 2),
        )
        assert all(s in (201, 503) for s, _, _, _ in answers.values()), answers
        assert all(r for s, _, _, r in answers.values() if s == 503), answers
        # A 503 tells the client to try again: it must mean nothing was made.
        assert refused_but_made == [], (refused_but_made, answers)
    finally:
        await locker.close()
        await api.close()
