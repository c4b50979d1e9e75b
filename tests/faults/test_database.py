"""Database faults short of an outage, each on this module's own test database only (never
server-wide): a failover to a read-only standby, a lock held on a busy table, statements
cancelled and backends ended under a burst, and an outcome write cancelled after the SMTP
server took the email. The API answers 503 with Retry-After (never a 500, and a 503 means
nothing was made), readiness says what is wrong, no event is dead-lettered, no email goes
twice, and the services heal by themselves once the fault ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from libs.common.events import InvitationRequested
from tests.faults.support import (
    Api,
    all_delivered,
    dead_letters,
    deliveries_settled,
    outboxes_drained,
    per_address,
    publish,
    record,
    unique_emails,
    wait_until,
)
from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, db_fetch, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink) -> AsyncIterator[Stack]:
    # A row left 'sending' is queued again after 6 s, not 120: a lost outcome shows here
    # as a second email within the test (a send bounded by 4 s: the mailer refuses a stuck
    # time below a send's bound).
    async with running_stack(
        sink, MAILER_STUCK_SENDING_SECONDS="6", MAILER_SMTP_TIMEOUT_SECONDS="2"
    ) as running:
        yield running


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
    rows = await db_fetch(
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


BURST = 200


async def test_statements_cancelled_and_backends_terminated_under_a_burst(stack: Stack) -> None:
    """While 200 invitations are sent, another session cancels the services' running
    statements every 0.05 s and terminates all their backends every 0.25 s: every address gets
    exactly one email, nothing is dead-lettered or left unpublished, and the API answers
    only 201 or 503 (the client retries a 503 after checking what landed)."""
    from tests.faults.support import burst

    api = Api(stack)
    database = _database(stack)
    admin = await _admin_conn(stack)
    hits = {"cancelled": 0, "terminated": 0}
    try:
        portal = await api.create_portal("Cancelled statements")
        emails = unique_emails("cancel", BURST)
        invites = asyncio.create_task(burst(api, portal["id"], emails, concurrency=8))
        turn = 0
        while not invites.done():
            # Cancel what runs now; every fifth turn, end every connection (idle ones too,
            # which the pools lend next).
            terminate = turn % 5 == 4
            action = "pg_terminate_backend" if terminate else "pg_cancel_backend"
            rows = await admin.fetch(
                f"SELECT {action}(pid) AS hit FROM pg_stat_activity"
                " WHERE datname = $1 AND client_port = ANY($3::int[])"
                "   AND (state = 'active' OR $2)",
                database,
                terminate,
                _service_ports(stack),
            )
            hits["terminated" if terminate else "cancelled"] += sum(1 for r in rows if r["hit"])
            turn += 1
            await asyncio.sleep(0.05)
        await invites
        await all_delivered(stack, emails, timeout=90)
        await outboxes_drained(stack, timeout=60)
        dead = await dead_letters(stack)
        counts = per_address(stack, emails)
        record(
            "cancel_and_terminate_under_burst",
            invitations=BURST,
            backends_hit=hits,
            client_retries=dict(api.retries),
            emails_delivered=sum(counts.values()),
            duplicated=sum(1 for n in counts.values() if n > 1),
            dead_lettered=dead,
        )
        assert len(counts) == BURST
        assert all(n == 1 for n in counts.values()), counts
        assert dead == dict.fromkeys(dead, 0)
        await deliveries_settled(stack)
    finally:
        await admin.close()
        await api.close()


def _service_ports(stack: Stack) -> list[int]:
    """The local TCP ports of the services' sockets (the test's own connections to the
    database, which look the same to PostgreSQL, are left alone)."""
    inodes: set[str] = set()
    for service in stack.services.values():
        if service.proc is None:
            continue
        fds = Path(f"/proc/{service.proc.pid}/fd")
        for fd in fds.iterdir() if fds.exists() else ():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_outcome_write_cancelled_after_the_smtp_server_took_the_email(stack: Stack) -> None:
    """The SMTP server has taken an email; the mailer's statement recording it as sent
    waits on a lock and is cancelled (pg_cancel_backend, as an operator or a
    statement_timeout would). The outcome must still be written, not left 'sending' for
    the stuck-row sweep to send the email a second time."""
    api = Api(stack)
    database = _database(stack)
    sink = stack.sink.sink
    gate = threading.Event()
    sink.holding.clear()
    admin = await _admin_conn(stack)
    locker = await asyncpg.connect(stack.database_url)
    cancelled = 0
    try:
        portal = await api.create_portal("Cancelled outcome")
        email = unique_emails("outcome", 1)[0]
        sink.hold_data = gate
        await api.invite(portal["id"], email)

        async def holding() -> bool:
            return sink.holding.is_set()

        await wait_until(holding, 30, "the SMTP DATA")
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE mailer.deliveries IN ACCESS EXCLUSIVE MODE")
        try:
            gate.set()
            await stack.sink.wait_for(email, timeout=10)

            async def waiting_on_lock() -> bool:
                nonlocal cancelled
                rows = await admin.fetch(
                    "SELECT pg_cancel_backend(pid) AS hit FROM pg_stat_activity"
                    " WHERE datname = $1 AND wait_event_type = 'Lock'"
                    "   AND client_port = ANY($2::int[])",
                    database,
                    _service_ports(stack),
                )
                cancelled += sum(1 for r in rows if r["hit"])
                return cancelled > 0

            await wait_until(waiting_on_lock, 10, "the outcome write waiting on the lock", 0.05)
        finally:
            await tx.rollback()
        sink.hold_data = None
        # Past the stuck-sending window (6 s) and a maintenance round (5 s).
        await asyncio.sleep(15)
        rows = await db_fetch(
            stack,
            "SELECT status, attempts FROM mailer.deliveries WHERE to_address = $1",
            email,
        )
        emails = len(stack.sink.to(email))
        record(
            "outcome_write_cancelled",
            statements_cancelled=cancelled,
            emails=emails,
            deliveries=[dict(r) for r in rows],
        )
        assert emails == 1, rows
        assert [r["status"] for r in rows] == ["sent"], rows
    finally:
        sink.hold_data = None
        gate.set()
        await locker.close()
        await admin.close()
        await api.close()
