"""PostgreSQL out of connection slots for a service: another program holds every slot the
service's role may have (``ALTER ROLE … CONNECTION LIMIT``, as a DBA caps a role, or as
``max_connections`` does server-wide, which these tests can't touch on a shared server).
Only this module's own roles are capped, and always uncapped in a ``finally``.

The API answers 503 ``unavailable`` with Retry-After (never a 500, never a hang), an event
that arrives meanwhile waits instead of being dead-lettered, readiness says why, and the
service recovers by itself once slots are free; a service that starts while none is free
comes up once one is."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from libs.common.database_roles import role_name
from libs.common.events import InvitationRequested
from tests.faults.support import (
    Api,
    all_delivered,
    dead_letters,
    outboxes_drained,
    per_address,
    publish,
    record,
    unique_emails,
    wait_until,
)
from tests.support.stack import Stack, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _role(stack: Stack, service: str) -> str:
    return role_name(urlsplit(stack.database_url).path.lstrip("/"), service)


async def _admin(stack: Stack) -> asyncpg.Connection:
    parts = urlsplit(stack.database_url)
    return await asyncpg.connect(parts._replace(path="/postgres").geturl())


async def _no_slots(admin: asyncpg.Connection, role: str) -> int:
    """Cap ``role`` at no connection and end the ones it has (as if another program had
    taken every slot); returns how many were ended."""
    await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
    rows = await admin.fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
    )
    return len(rows)


async def _slots_back(admin: asyncpg.Connection, role: str) -> None:
    await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')


async def _readyz(stack: Stack, name: str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
        session.get(stack[name].management_url + "/readyz") as response,
    ):
        return response.status, await response.json()


async def test_a_running_service_out_of_slots_answers_503_and_recovers(stack: Stack) -> None:
    api = Api(stack)
    admin = await _admin(stack)
    role = _role(stack, "invitations")
    try:
        portal = await api.create_portal("Out of slots")
        before = unique_emails("slots-before", 2)
        for email in before:
            await api.invite(portal["id"], email)
        await all_delivered(stack, before, timeout=30)

        try:
            ended = await _no_slots(admin, role)
            during = unique_emails("slots-during", 1)[0]
            started = time.monotonic()
            async with api.session.post(
                stack.public_url + f"/api/v1/portals/{portal['id']}/invitations",
                json={"email": during},
            ) as response:
                status, body = response.status, await response.json()
                retry_after = response.headers.get("Retry-After")
            api_seconds = round(time.monotonic() - started, 2)
            event_email = unique_emails("slots-event", 1)[0]
            await publish(
                stack,
                "invitation.requested",
                InvitationRequested(
                    portal_id=portal["id"], email=event_email, idempotency_key=uuid.uuid4().hex
                ),
            )
            ready_status, ready_body = await _readyz(stack, "invitations")
            # Time for the consumer to spend its deliveries, had it counted them.
            await asyncio.sleep(8)
        finally:
            await _slots_back(admin, role)
        freed = time.monotonic()

        after = unique_emails("slots-after", 1)[0]
        await api.invite(portal["id"], after, deadline=60)
        healed = round(time.monotonic() - freed, 2)
        await all_delivered(stack, [after, event_email], timeout=60)
        await outboxes_drained(stack)
        await wait_until(lambda: _ready_now(stack, "invitations"), 30, "invitations ready again")
        dead = await dead_letters(stack)
        rows = await db_fetch(
            stack,
            "SELECT count(*) AS n FROM invitations.invitations WHERE email_lower = $1",
            during,
        )
        made_meanwhile = int(rows[0]["n"])
        counts = per_address(stack, [*before, after, event_email])
        record(
            "out_of_connection_slots",
            connections_ended=ended,
            api_status=status,
            api_body=body,
            api_seconds=api_seconds,
            retry_after=retry_after,
            readyz=(ready_status, ready_body),
            seconds_to_first_invite_after=healed,
            dead_lettered=dead,
            made_meanwhile=made_meanwhile,
        )
        assert status == 503, body
        assert body["error"]["code"] == "unavailable", body
        assert retry_after, "no Retry-After on the 503"
        assert ready_status == 503, ready_body
        assert ready_body["checks"]["database"] != "ok", ready_body
        assert made_meanwhile == 0, "a 503 must mean nothing was made"
        assert dead == dict.fromkeys(dead, 0)
        assert all(n == 1 for n in counts.values()), counts
        assert "dependency_unavailable" in stack["invitations"].log_tail(400)
    finally:
        await _slots_back(admin, role)
        await admin.close()
        await api.close()


async def _ready_now(stack: Stack, name: str) -> bool:
    try:
        status, _ = await _readyz(stack, name)
    except aiohttp.ClientError:
        return False
    return status == 200


async def test_a_service_started_without_a_free_slot_comes_up_once_one_is(
    stack: Stack,
) -> None:
    api = Api(stack)
    admin = await _admin(stack)
    role = _role(stack, "mailer")
    mailer = stack["mailer"]
    try:
        portal = await api.create_portal("Started out of slots")
        mailer.stop()
        try:
            await _no_slots(admin, role)
            mailer.start()
            waiting = unique_emails("slots-start", 2)
            for email in waiting:
                await api.invite(portal["id"], email)

            async def said_so() -> bool:
                return "dependency_not_ready" in mailer.log_tail(100)

            await wait_until(said_so, 60, "the mailer to say the database refuses it")
            # Longer than the mailer's first few attempts to connect.
            await asyncio.sleep(20)
            alive = mailer.proc is not None and mailer.proc.poll() is None
        finally:
            await _slots_back(admin, role)
        freed = time.monotonic()
        await mailer.wait_ready()
        ready_after = round(time.monotonic() - freed, 2)
        await all_delivered(stack, waiting, timeout=60)
        counts = per_address(stack, waiting)
        record(
            "started_out_of_connection_slots",
            alive_while_refused=alive,
            seconds_to_ready_after=ready_after,
            log=mailer.log_tail(5),
        )
        assert alive, mailer.log_tail(40)
        assert all(n == 1 for n in counts.values()), counts
    finally:
        await _slots_back(admin, role)
        await admin.close()
        await api.close()
        if mailer.proc is None or mailer.proc.poll() is not None:
            mailer.start()
            await mailer.wait_ready()
