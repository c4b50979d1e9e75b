"""Black holes: a peer that stops answering without closing anything, as a real network
does (a cable pulled, a node gone, a NAT table flushed). Every service reaches
PostgreSQL, RabbitMQ and the SMTP sink through a proxy (tests/support/proxy.py
``BlackHole``) that this module switches: the connections open at the hole stay silent
for good, and new ones work again once it is over, so a service heals only if it notices
its dead connections by itself (timeouts, heartbeats) instead of waiting on them forever.

Only this module's stack goes through the proxies: the shared servers are not touched."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import pytest

from libs.common.db import LISTEN_CHECK
from tests.faults.support import (
    Api,
    all_delivered,
    dead_letters,
    deliveries_settled,
    outbox_backlog,
    outboxes_drained,
    per_address,
    record,
    unique_emails,
    wait_until,
)
from tests.support.env import new_test_env, provisioned
from tests.support.proxy import BlackHole
from tests.support.servers import current as current_servers
from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, _run_stack, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SERVICES = ("gateway", "identity", "portals", "invitations", "mailer")
SMTP_TIMEOUT = 3.0
# A request answered within this, whatever hangs behind it: the client never waits longer.
CLIENT_TIMEOUT = 40.0


class Holes:
    def __init__(self, database: BlackHole, broker: BlackHole, smtp: BlackHole) -> None:
        self.database = database
        self.broker = broker
        self.smtp = smtp


@pytest.fixture(scope="module")
async def holes(sink: SmtpSink) -> AsyncIterator[Holes]:
    yield Holes(
        BlackHole("127.0.0.1", 0),
        BlackHole("127.0.0.1", 0),
        BlackHole("127.0.0.1", sink.port),
    )


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = (
        parts.netloc.rsplit(":", 1)[0] if ":" in parts.netloc.rsplit("@", 1)[-1] else parts.netloc
    )
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink, holes: Holes) -> AsyncIterator[Stack]:
    async with provisioned(new_test_env()) as test_env:
        database, amqp = urlsplit(test_env.database_url), urlsplit(test_env.amqp_url)
        holes.database.target = (database.hostname or "127.0.0.1", database.port or 5432)
        holes.broker.target = (amqp.hostname or "127.0.0.1", amqp.port or 5672)
        for hole in (holes.database, holes.broker, holes.smtp):
            await hole.start()
        try:
            extra = {
                "DATABASE_URL": _through(test_env.database_url, holes.database.port),
                "AMQP_URL": _through(test_env.amqp_url, holes.broker.port),
                "SMTP_PORT": str(holes.smtp.port),
                "MAILER_SMTP_TIMEOUT_SECONDS": str(SMTP_TIMEOUT),
                # A dead broker connection noticed after about 9 s, not 30.
                "AMQP_HEARTBEAT_SECONDS": "2",
                # Well above two SMTP timeouts (settings.py): a stalled send is never
                # taken for a crashed one within a test.
                "MAILER_STUCK_SENDING_SECONDS": "30",
            }
            async for running in _run_stack(test_env, sink, extra):
                yield running
        finally:
            for hole in (holes.database, holes.broker, holes.smtp):
                hole.restore()
                await hole.stop()


async def _timed(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int | str, Any, float]:
    """Status (or the client's error, a hang being TimeoutError), body and seconds."""
    started = time.monotonic()
    try:
        async with session.request(
            method, url, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT), **kwargs
        ) as response:
            text = await response.text()
            try:
                body: Any = await response.json(content_type=None)
            except ValueError:
                body = text[:300]
            return response.status, body, round(time.monotonic() - started, 2)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__, None, round(time.monotonic() - started, 2)


async def _readiness(stack: Stack) -> dict[str, tuple[int | str, Any, float]]:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        answers = await asyncio.gather(
            *(_timed(session, "GET", stack[name].management_url + "/readyz") for name in SERVICES)
        )
    return dict(zip(SERVICES, answers, strict=True))


async def _all_ready(stack: Stack) -> bool:
    return all(status == 200 for status, _, _ in (await _readiness(stack)).values())


async def test_database_black_holed_then_back(stack: Stack, holes: Holes) -> None:
    """PostgreSQL stops answering mid-run without closing anything: the API answers 503
    with a JSON error within a bound (never hangs), readiness says not ready, and once
    the network is back every service heals by itself (its dead connections replaced,
    not waited on forever) and nothing is lost or sent twice."""
    api = Api(stack)
    try:
        portal = await api.create_portal("Database black hole")
        before = unique_emails("pg-hole-before", 2)
        for email in before:
            await api.invite(portal["id"], email)
        await all_delivered(stack, before, timeout=30)

        listening = await _listening(stack)
        holes.database.swallow()
        try:
            during = unique_emails("pg-hole-during", 1)[0]
            invite, listing, ready = await asyncio.gather(
                _timed(
                    api.session,
                    "POST",
                    stack.public_url + f"/api/v1/portals/{portal['id']}/invitations",
                    json={"email": during},
                ),
                _timed(api.session, "GET", stack.public_url + "/api/v1/portals"),
                _readiness(stack),
            )
            silent = holes.database.silent
        finally:
            holes.database.restore()
        restored = time.monotonic()
        restored_at = (await db_fetch(stack, "SELECT now() AS t"))[0]["t"]
        healed_ready = await wait_until(lambda: _all_ready(stack), 60, "every service ready")
        after = unique_emails("pg-hole-after", 3)
        for email in after:
            await api.invite(portal["id"], email, deadline=60)
        healed_invite = round(time.monotonic() - restored, 2)
        await all_delivered(stack, after, timeout=60)
        await outboxes_drained(stack)
        await deliveries_settled(stack)

        # Every LISTEN connection lost in the hole is noticed and opened anew: kept, it
        # waits for notifications forever, and every wake-up is lost until a restart. One
        # the hole did not break answers its next check instead.
        async def listening_again() -> bool:
            return await _listening(stack, since=restored_at) >= listening

        await wait_until(listening_again, 30, f"LISTEN connections anew for {listening}")
        made_during = await db_fetch(
            stack,
            "SELECT count(*) AS n FROM invitations.invitations WHERE email_lower = $1",
            during,
        )
        counts = per_address(stack, [*before, *after, during])
        dead = await dead_letters(stack)
        record(
            "database_black_hole",
            connections_silenced=silent,
            invite_during=invite,
            listing_during=listing,
            readyz_during={n: (s, t, (b or {}).get("checks")) for n, (s, b, t) in ready.items()},
            seconds_to_ready_after=healed_ready,
            seconds_to_invites_after=healed_invite,
            client_retries=dict(api.retries),
            dead_lettered=dead,
        )
        for status, body, _ in (invite, listing):
            assert status == 503, (status, body)
            assert body["error"]["code"] == "unavailable", body
        # A 503 means nothing was made.
        assert made_during[0]["n"] == 0
        for name, (status, body, _) in ready.items():
            assert status == 503, (name, status, body)
            assert body["checks"]["database"] != "ok", (name, body)
        assert all(n == 1 for n in counts.values()), counts
        assert dead == dict.fromkeys(dead, 0)
    finally:
        await api.close()


async def test_broker_black_holed_then_back(stack: Stack, holes: Holes) -> None:
    """RabbitMQ stops answering without closing anything while invitations are made:
    they wait in the outboxes, and once the network is back the services notice their
    dead connections by themselves, reconnect, publish and consume: every invitation
    gets exactly one email and nothing is dead-lettered."""
    api = Api(stack)
    try:
        portal = await api.create_portal("Broker black hole")
        before = unique_emails("amqp-hole-before", 2)
        for email in before:
            await api.invite(portal["id"], email)
        await all_delivered(stack, before, timeout=30)

        holes.broker.swallow()
        try:
            during = unique_emails("amqp-hole-during", 4)
            for email in during:
                await api.invite(portal["id"], email, deadline=30)
            await asyncio.sleep(5)
            ready = await _readiness(stack)
            silent = holes.broker.silent
        finally:
            holes.broker.restore()
        restored = time.monotonic()
        after = unique_emails("amqp-hole-after", 2)
        for email in after:
            await api.invite(portal["id"], email, deadline=30)
        try:
            delivered = await all_delivered(stack, [*during, *after], timeout=90)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; outboxes: {await outbox_backlog(stack)}; queues: {await _queues(stack)};"
                f" sessions: {await _sessions(stack)}"
            ) from None
        await outboxes_drained(stack)
        await deliveries_settled(stack)
        counts = per_address(stack, [*before, *during, *after])
        dead = await dead_letters(stack)
        record(
            "broker_black_hole",
            connections_silenced=silent,
            readyz_during={n: (s, (b or {}).get("checks")) for n, (s, b, _) in ready.items()},
            seconds_to_delivered_after=round(time.monotonic() - restored, 2),
            seconds_waiting_for_emails=delivered,
        )
        assert all(n == 1 for n in counts.values()), counts
        assert dead == dict.fromkeys(dead, 0)
    finally:
        await api.close()


async def _listening(stack: Stack, since: Any = None) -> Counter[str]:
    """The services' LISTEN connections by name (their last query is the LISTEN or the
    listener's check) that are known alive after ``since``: opened after it, or an older
    one whose check reached the server after it. A connection the hole did not break (its
    check every 10 s fell outside the hole, TCP delivered what waited) is as good as a new
    one; only a dead one kept for ever is the defect, and it runs no check."""
    rows = await db_fetch(
        stack,
        "SELECT application_name AS name FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'clientpress-%'"
        "   AND (query LIKE 'LISTEN %' OR query = $1)"
        "   AND ($2::timestamptz IS NULL OR backend_start > $2"
        "        OR (query = $1 AND query_start > $2))",
        LISTEN_CHECK,
        since,
    )
    return Counter(row["name"] for row in rows)


async def _sessions(stack: Stack) -> list[tuple[Any, ...]]:
    rows = await db_fetch(
        stack,
        "SELECT application_name, state, left(query, 60) AS q,"
        " round(extract(epoch FROM now() - xact_start)) AS xact"
        " FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle'",
    )
    return [tuple(r.values()) for r in rows]


async def _queues(stack: Stack) -> dict[str, tuple[int, int]]:
    """Messages ready and consumers of each service's queue, asked directly."""
    prefix = stack.env["BUS_PREFIX"]
    connection = await aio_pika.connect(current_servers().amqp_url)
    found = {}
    try:
        for service in ("invitations", "mailer", "portals", "identity"):
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{prefix}.{service}", passive=True)
            result = queue.declaration_result
            found[service] = (int(result.message_count or 0), int(result.consumer_count or 0))
            await channel.close()
    finally:
        await connection.close()
    return found


async def _delivery(stack: Stack, email: str) -> dict[str, Any]:
    rows = await db_fetch(
        stack,
        "SELECT status, attempts, last_error FROM mailer.deliveries WHERE to_address = $1",
        email,
    )
    return dict(rows[0]) if rows else {}


async def _smtp_fault_then_back(stack: Stack, holes: Holes, scenario: str, fault: str) -> None:
    api = Api(stack)
    try:
        portal = await api.create_portal(f"SMTP {scenario}")
        warm = unique_emails(f"{scenario}-warm", 2)
        for email in warm:
            await api.invite(portal["id"], email)
        await all_delivered(stack, warm, timeout=30)

        # The mailer's open connections go silent too.
        holes.smtp.swallow()
        holes.smtp.restore()
        if fault == "tarpit":
            holes.smtp.tarpit = True
        else:
            holes.smtp.stall_after = b"DATA\r\n"
        try:
            email = unique_emails(scenario, 1)[0]
            await api.invite(portal["id"], email)

            async def retried() -> bool:
                row = await _delivery(stack, email)
                return bool(row.get("last_error"))

            await wait_until(retried, 60, "a failed attempt recorded as a retry")
            during = await _delivery(stack, email)
            sent_during = len(stack.sink.to(email))
        finally:
            holes.smtp.tarpit = False
            holes.smtp.stall_after = None
        await all_delivered(stack, [email], timeout=60)
        await deliveries_settled(stack)
        # Past another round of timeouts and a stuck-row sweep's chance to resend.
        await asyncio.sleep(SMTP_TIMEOUT * 2)
        after = await _delivery(stack, email)
        record(
            f"smtp_{scenario}",
            delivery_during=during,
            delivery_after=after,
            connections_accepted=holes.smtp.accepted,
        )
        assert sent_during == 0
        # A failure recorded (a retry), never taken for a send.
        assert during["status"] in ("queued", "sending"), during
        assert "Timeout" in during["last_error"], during
        assert after["status"] == "sent", after
        assert len(stack.sink.to(email)) == 1
    finally:
        await api.close()


async def test_smtp_greeting_never_comes(stack: Stack, holes: Holes) -> None:
    """An SMTP tarpit: connections are accepted and the greeting never comes. The mailer
    gives up on it after MAILER_SMTP_TIMEOUT_SECONDS, records a retry (never "sent"), and
    sends once the server answers again."""
    await _smtp_fault_then_back(stack, holes, "tarpit", "tarpit")


async def test_smtp_stalls_after_data(stack: Stack, holes: Holes) -> None:
    """The SMTP server answers up to DATA and then nothing: the message never reaches it.
    The mailer times out, records a retry (never "sent") and sends it once later."""
    await _smtp_fault_then_back(stack, holes, "stall", "stall")
